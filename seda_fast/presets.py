"""Named model configurations (``SeDAConfig`` keyword arguments) shared by the tools, benchmarks
and tests, so every place that says "the default model" means the same one.

* ``DEFAULT``: the spec's widths (d = 512, H = 1024, L = 2, K1 = K2 = 10) on the real features
  (EfficientNet-Lite0 1280-d, MiniLM 384-d, 10 Fashion-MNIST classes): what the GPU figures and the
  compile report are about.
* ``SMALL``: odd widths (none a multiple of 16, d < H and the projector's input narrower than d)
  with L = 3 and K = 4, so the kernels' masks and loops are exercised at test size.
* ``TINY``: the smallest sensible model, for end-to-end smoke runs under the Triton interpreter.
"""
from __future__ import annotations

from .config import SeDAConfig

DEFAULT = dict(visual_dim=1280, text_dim=384, num_classes=10)
SMALL = dict(visual_dim=37, text_dim=21, num_classes=7, dim=48, hidden=80, layers=3, learner_steps=4,
             translator_steps=4)
TINY = dict(visual_dim=13, text_dim=7, num_classes=3, dim=16, hidden=24, layers=2, learner_steps=2,
            translator_steps=2)
PRESETS = {"default": DEFAULT, "small": SMALL, "tiny": TINY}


def config(name: str, **overrides) -> SeDAConfig:
    """``SeDAConfig`` of the preset ``name`` (``"default"``, ``"small"``, ``"tiny"``) with ``overrides``."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return SeDAConfig(**{**PRESETS[name], **overrides})
