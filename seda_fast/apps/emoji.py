"""Second real dataset, with per-sample text: Noto Color Emoji images captioned by their names.

* Images: every fully-qualified emoji of Unicode's ``emoji-test.txt`` (Debian ``unicode-data``,
  ``/usr/share/unicode/emoji``) that ``NotoColorEmoji.ttf`` (Debian ``fonts-noto-color-emoji``)
  draws, rendered with Pillow: the CBDT bitmap font only loads at size 109, so each glyph is
  drawn there (raqm layout, so ZWJ / flag / keycap / skin-tone sequences become one glyph),
  cropped to its alpha box, resized (Lanczos, keeping its aspect) and composited on a white
  ``S x S`` RGB canvas, ``S`` = the encoder's image size. Both packages are fetched like
  Fashion-MNIST (:func:`seda_fast.apps.data.debian_package_dir`).
* Which emoji: status ``fully-qualified`` only. That drops the whole ``Component`` group (its 9
  rows are skin-tone swatches and hair pieces with status ``component``, not stand-alone
  emoji), leaving 9 groups and 99 subgroups. Skin-tone variants (``... : light skin tone``) are
  left out by default (``skin_tones=False``): they are the same drawing recoloured, with a name
  that differs only by the suffix, and would make "People & Body" 59 % of the data. An emoji the
  font does not draw (a missing code point renders blank; a missing sequence lays out as several
  glyphs; a flag it lacks draws Noto's "?" flag or the bare black flag) is skipped and counted.
* Views (augmentation, deterministic): view 0 is the canonical rendering (90 % of the canvas,
  centred); views 1.. draw a scale in [0.6, 0.95] and an offset within the free margin from a
  generator seeded by (``seed``, the emoji's code points), so an emoji's images do not depend on
  which other emoji are loaded.
* Split (deterministic, by emoji, so no emoji -- nor any of its skin-tone variants -- is on both
  sides): within each subgroup, base emoji (code points without skin-tone modifiers and U+FE0F)
  are ordered by SHA-256 of ``seed:base`` and the first ``round(test_fraction * n)`` go to test,
  keeping at least one in train. Train uses all views of its emoji; test uses view 0 only (one
  canonical image per unseen emoji).
* Labels: ``level="group"`` (9) or ``"subgroup"`` (99), in file order.
* Text: ``text_train [N_train, 384]``, the MiniLM embedding of each row's emoji name (shared by
  its views); ``class_texts`` are sentences naming each group/subgroup (for the one-step mapping,
  which needs class targets).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import data
from .. import validation as val

FONT_PACKAGE = "fonts-noto-color-emoji"
FONT_DIR = Path("/usr/share/fonts/truetype/noto")
FONT_FILE = "NotoColorEmoji.ttf"
FONT_SIZE = 109  # the one size of the CBDT strikes; Pillow refuses others
UNICODE_PACKAGE = "unicode-data"
UNICODE_DIR = Path("/usr/share/unicode/emoji")
TEST_FILE = "emoji-test.txt"
LEVELS = ("group", "subgroup")
SKIN_TONES = range(0x1F3FB, 0x1F400)
_TAGS = range(0xE0020, 0xE0080)
_REGIONAL = range(0x1F1E6, 0x1F200)
_RENDER_VERSION = 1  # bump when the rendering changes (part of the feature cache key)
CANONICAL_SCALE = 0.9
AUG_SCALE = (0.6, 0.95)


@dataclass(frozen=True)
class Emoji:
    """One row of ``emoji-test.txt``."""
    codepoints: tuple
    status: str
    name: str
    group: str
    subgroup: str
    version: str

    @property
    def text(self) -> str:
        return "".join(map(chr, self.codepoints))

    @property
    def base(self) -> str:
        """Split key: code points without skin-tone modifiers and U+FE0F, as hex."""
        return " ".join(f"{c:04X}" for c in self.codepoints if c not in SKIN_TONES and c != 0xFE0F)

    @property
    def has_skin_tone(self) -> bool:
        return any(c in SKIN_TONES for c in self.codepoints)


def parse_emoji_test(path, statuses=("fully-qualified",)) -> list[Emoji]:
    """Rows of ``emoji-test.txt`` (``codepoints ; status # emoji Ex.y name`` under ``# group:`` and
    ``# subgroup:`` headers) whose status is in ``statuses``, in file order."""
    if isinstance(statuses, str):
        statuses = (statuses,)
    rows, group, subgroup = [], None, None
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\n")
            if line.startswith("# group:"):
                group, subgroup = line.split(":", 1)[1].strip(), None
            elif line.startswith("# subgroup:"):
                subgroup = line.split(":", 1)[1].strip()
            elif line.strip() and not line.startswith("#"):
                try:
                    cps, rest = line.split(";", 1)
                    status, comment = rest.split("#", 1)
                    _glyph, version, name = comment.strip().split(" ", 2)
                    codepoints = tuple(int(c, 16) for c in cps.split())
                except ValueError as exc:
                    raise ValueError(f"{path}:{lineno}: not an emoji-test.txt row: {line!r}") from exc
                if group is None or subgroup is None or not version.startswith("E") or not codepoints:
                    raise ValueError(f"{path}:{lineno}: row outside a group/subgroup or malformed: {line!r}")
                status = status.strip()
                if status in statuses:
                    rows.append(Emoji(codepoints, status, name.strip(), group, subgroup, version[1:]))
    if not rows:
        raise ValueError(f"{path} holds no emoji with status in {tuple(statuses)}")
    return rows


def emoji_test_path(cache=None) -> Path:
    return data.debian_package_dir(UNICODE_PACKAGE, UNICODE_DIR, [TEST_FILE], cache) / TEST_FILE


def font_path(cache=None) -> Path:
    return data.debian_package_dir(FONT_PACKAGE, FONT_DIR, [FONT_FILE], cache) / FONT_FILE


def load_font(path=None, cache=None):
    """Noto Color Emoji at its bitmap size (raqm layout when Pillow has it: needed to shape
    sequences into one glyph; without it every multi-code-point emoji counts as missing)."""
    from PIL import ImageFont, features

    path = font_path(cache) if path is None else path
    engine = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
    return ImageFont.truetype(str(path), FONT_SIZE, layout_engine=engine)


def _draw(font, text: str) -> np.ndarray:
    """``text`` drawn in colour on a transparent canvas: ``[H, W, 4]`` uint8 RGBA."""
    from PIL import Image, ImageDraw

    width = max(1, math.ceil(font.getlength(text)))
    height = max(1, font.getbbox(text)[3], FONT_SIZE + 32)
    im = Image.new("RGBA", (width, height), (255, 255, 255, 0))
    ImageDraw.Draw(im).text((0, 0), text, font=font, embedded_color=True)
    return np.asarray(im)


def glyph(font, emoji: Emoji):
    """The emoji's drawing cropped to its alpha box (a PIL RGBA image), or ``None`` when the font
    does not have it (blank, laid out as more than one glyph, or a flag drawn as Noto's "?" flag
    or as the bare black flag)."""
    from PIL import Image

    text = emoji.text
    one = font.getlength(chr(0x1F600))
    if font.getlength(text) > 1.5 * one:
        return None
    rgba = _draw(font, text)
    alpha = rgba[..., 3]
    if not alpha.any():
        return None
    if any(c in _TAGS or c in _REGIONAL for c in emoji.codepoints):
        # Noto draws unknown flags as a white flag with "?"; an unknown tag sequence may also
        # fall back to its bare base (the black flag).
        fallbacks = (_draw(font, chr(0x1F1FF) * 2), _draw(font, "\U0001F3F4\U000E0078\U000E0078\U000E007F"),
                     _draw(font, chr(emoji.codepoints[0])))
        if any(f.shape == rgba.shape and np.array_equal(f, rgba) for f in fallbacks):
            return None
    ys, xs = np.nonzero(alpha)
    return Image.fromarray(rgba[ys.min():ys.max() + 1, xs.min():xs.max() + 1].copy(), "RGBA")


def _emoji_seed(emoji: Emoji, seed: int) -> int:
    digest = hashlib.sha256(f"{seed}:{emoji.text}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def view_params(emoji: Emoji, views: int, seed: int = 0) -> list[tuple[float, float, float]]:
    """``(scale, dx, dy)`` per view: scale of the longer side as a fraction of the canvas, offsets
    in [-1, 1] as fractions of half the free margin. View 0 is ``(0.9, 0, 0)``."""
    val.check_int("views", views)
    rng = np.random.default_rng(_emoji_seed(emoji, seed))
    params = [(CANONICAL_SCALE, 0.0, 0.0)]
    for _ in range(views - 1):
        scale = float(rng.uniform(*AUG_SCALE))
        dx, dy = (float(v) for v in rng.uniform(-1.0, 1.0, size=2))
        params.append((scale, dx, dy))
    return params


def place(drawing, size: int, scale: float = CANONICAL_SCALE, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """Composite an RGBA drawing on a white ``size x size`` canvas: ``[3, size, size]`` uint8."""
    from PIL import Image

    val.check_int("size", size)
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    w, h = drawing.size
    factor = scale * size / max(w, h)
    nw, nh = max(1, round(w * factor)), max(1, round(h * factor))
    small = drawing.resize((nw, nh), Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    x = round((size - nw) / 2 * (1.0 + dx))
    y = round((size - nh) / 2 * (1.0 + dy))
    canvas.alpha_composite(small, (min(max(x, 0), size - nw), min(max(y, 0), size - nh)))
    return np.asarray(canvas.convert("RGB")).transpose(2, 0, 1).copy()


def render(font, emoji_list, size: int, views: int = 1, seed: int = 0) -> torch.Tensor:
    """``[len(emoji_list) * views, 3, size, size]`` uint8, emoji-major (row ``e * views + k``)."""
    val.check_int("views", views)
    out = np.empty((len(emoji_list) * views, 3, size, size), dtype=np.uint8)
    for e, emoji in enumerate(emoji_list):
        drawing = glyph(font, emoji)
        if drawing is None:
            raise ValueError(f"the font does not draw {emoji.name!r}; filter with glyph() first")
        for k, (scale, dx, dy) in enumerate(view_params(emoji, views, seed)):
            out[e * views + k] = place(drawing, size, scale, dx, dy)
    return torch.from_numpy(out)


def split(emoji_list, test_fraction: float = 0.25, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices ``(train, test)`` into ``emoji_list``, by base emoji within each subgroup (see the
    module doc). Every subgroup keeps at least one base emoji in train."""
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be a number in [0, 1), got {test_fraction!r}")
    by_subgroup: dict[str, list[str]] = {}
    for emoji in emoji_list:
        bases = by_subgroup.setdefault(emoji.subgroup, [])
        if emoji.base not in bases:
            bases.append(emoji.base)
    test_bases = set()
    for bases in by_subgroup.values():
        ranked = sorted(bases, key=lambda b: hashlib.sha256(f"{seed}:{b}".encode()).hexdigest())
        n_test = min(len(ranked) - 1, int(test_fraction * len(ranked) + 0.5))
        test_bases.update(ranked[:n_test])
    train = [i for i, e in enumerate(emoji_list) if e.base not in test_bases]
    test = [i for i, e in enumerate(emoji_list) if e.base in test_bases]
    return train, test


def class_names(emoji_list, level: str) -> list[str]:
    """The groups or subgroups present, in file order."""
    _check_level(level)
    names: list[str] = []
    for emoji in emoji_list:
        name = getattr(emoji, level)
        if name not in names:
            names.append(name)
    return names


def class_sentence(name: str, level: str) -> str:
    """Text of a class for the class-text baselines, e.g. ``an emoji of the group smileys & emotion``."""
    return f"an emoji of the {level} {name.replace('-', ' ').lower()}"


def _check_level(level) -> None:
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")


@dataclass
class EmojiData:
    """Standardisation is left to the caller. Rows of ``*_train`` are (train emoji x views),
    rows of ``*_test`` are the canonical view of each test emoji."""
    v_train: torch.Tensor
    y_train: torch.Tensor
    text_train: torch.Tensor
    emoji_train: torch.Tensor  # index into ``emoji`` of each train row
    v_test: torch.Tensor
    y_test: torch.Tensor
    emoji_test: torch.Tensor
    emoji: list
    name_text: torch.Tensor  # [len(emoji), 384] MiniLM of each emoji's name
    class_names: list
    class_texts: list
    info: dict = field(default_factory=dict)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_emoji(skin_tones: bool = False, limit: int | None = None, cache=None, font=None):
    """``(kept, skipped, font, info)``: fully-qualified emoji the font draws, those it does not.

    ``limit`` keeps an evenly spaced subset of that many emoji (spans every group; for tests).
    """
    if not isinstance(skin_tones, bool):
        raise TypeError(f"skin_tones must be a bool, got {type(skin_tones).__name__}")
    test_file = emoji_test_path(cache)
    rows = [e for e in parse_emoji_test(test_file) if skin_tones or not e.has_skin_tone]
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(f"limit must be an int or None, got {type(limit).__name__}")
        if not 1 <= limit <= len(rows):
            raise ValueError(f"limit must be in [1, {len(rows)}], got {limit}")
        step = len(rows) / limit
        rows = [rows[int(i * step)] for i in range(limit)]
    fpath = None
    if font is None:
        fpath = font_path(cache)
        font = load_font(fpath)
    kept, skipped = [], []
    for emoji in rows:
        (kept if glyph(font, emoji) is not None else skipped).append(emoji)
    info = {"emoji_test": str(test_file), "font": str(fpath or getattr(font, "path", "")),
            "emoji_test_sha256": _file_digest(test_file), "candidates": len(rows)}
    if fpath is not None:
        info["font_sha256"] = _file_digest(fpath)
    return kept, skipped, font, info


def emoji_dataset(level: str = "group", image_size: int = 64, views: int = 4, skin_tones: bool = False,
                  test_fraction: float = 0.25, seed: int = 0, limit: int | None = None, cache=None,
                  batch_size: int = 256, progress: bool = True) -> EmojiData:
    """The emoji dataset as frozen-encoder features (visual features cached on disk like
    Fashion-MNIST's: keyed by the font and emoji-test checksums, the emoji, views, size and seed)."""
    _check_level(level)
    val.check_int("image_size", image_size)
    val.check_int("views", views)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    kept, skipped, font, src = load_emoji(skin_tones, limit, cache)
    train_idx, test_idx = split(kept, test_fraction, seed)
    if not test_idx:
        raise ValueError(f"no emoji left for test with test_fraction={test_fraction} and {len(kept)} emoji")

    key = json.dumps({"render": _RENDER_VERSION, "font": src.get("font_sha256"), "test": src["emoji_test_sha256"],
                      "emoji": [e.text for e in kept], "views": views, "size": image_size, "seed": seed,
                      "canonical": CANONICAL_SCALE, "aug": AUG_SCALE}, ensure_ascii=True)
    tag = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = (data.cache_dir(cache) / "features"
            / f"emoji-{len(kept)}x{views}-{image_size}px-{data.VISUAL_MODEL}-{tag}.pt")

    def compute():
        images = render(font, kept, image_size, views, seed)
        index = torch.arange(len(kept)).repeat_interleave(views)
        return data.encode_images(images, image_size, batch_size, progress), index

    feats, index, cache_info = data.cached_features(
        [path], compute, {"dataset": "emoji", "emoji": len(kept), "views": views, "image_size": image_size,
                          "seed": seed})
    expected = torch.arange(len(kept)).repeat_interleave(views)
    if not torch.equal(index, expected):
        raise data.ChecksumError(f"feature cache {path} does not match the emoji list (stale or foreign file)")

    names = class_names([kept[i] for i in train_idx], level)
    lookup = {n: c for c, n in enumerate(names)}
    labels = torch.tensor([lookup.get(getattr(e, level), -1) for e in kept], dtype=torch.int64)
    train_rows = torch.tensor([i * views + k for i in train_idx for k in range(views)], dtype=torch.int64)
    test_rows = torch.tensor([i * views for i in test_idx], dtype=torch.int64)
    emoji_train, emoji_test = index[train_rows], index[test_rows]
    if bool((labels[emoji_test] < 0).any()):  # cannot happen with split(): every subgroup keeps a train emoji
        raise RuntimeError("a test emoji's class has no training emoji")
    name_text = data.text_features([e.name for e in kept])
    info = {**src, "kept": len(kept), "skipped": len(skipped), "skipped_names": [e.name for e in skipped],
            "skin_tones": skin_tones, "views": views, "image_size": image_size, "seed": seed,
            "test_fraction": test_fraction, "train_emoji": len(train_idx), "test_emoji": len(test_idx),
            "level": level, "num_classes": len(names), "feature_cache": cache_info}
    return EmojiData(
        v_train=feats[train_rows], y_train=labels[emoji_train], text_train=name_text[emoji_train],
        emoji_train=emoji_train, v_test=feats[test_rows], y_test=labels[emoji_test], emoji_test=emoji_test,
        emoji=kept, name_text=name_text, class_names=names,
        class_texts=[class_sentence(n, level) for n in names], info=info)


__all__ = ["Emoji", "EmojiData", "parse_emoji_test", "load_font", "glyph", "view_params", "place", "render",
           "split", "class_names", "class_sentence", "load_emoji", "emoji_dataset", "emoji_test_path", "font_path"]
