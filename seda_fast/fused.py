"""The ``"triton"`` backend: glue between :class:`seda_fast.SeDA` and the launchers in
:mod:`seda_fast.kernels`. Same call signatures as the matching :mod:`seda_fast.reference`
functions, so the module layer can dispatch to either.
"""
from __future__ import annotations

import os

import torch


def interpreter_enabled() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1`` at import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - platform without triton
        return False
    return True


def available(device: torch.device) -> bool:
    """Whether fused kernels can run on ``device``: CUDA, or CPU under the Triton interpreter."""
    if not triton_importable():
        return False
    return device.type == "cuda" or (device.type == "cpu" and interpreter_enabled())


def require(device: torch.device) -> None:
    """Raise a clear error when the fused kernels cannot run on ``device``."""
    if not triton_importable():
        raise RuntimeError("backend='triton' needs the triton package (Linux); use backend='eager'")
    if device.type == "cpu" and not interpreter_enabled():
        raise RuntimeError(
            "backend='triton' on CPU tensors runs only under Triton's interpreter: set "
            "TRITON_INTERPRET=1 before importing seda_fast, move the model to CUDA, or use backend='eager'")
    if device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"backend='triton' supports CUDA (and CPU under TRITON_INTERPRET=1), not {device.type}")


def infer(model, visual: torch.Tensor, noise: torch.Tensor | None = None):
    """Fused inference chain: ``visual [B, Dv] -> (logits [B, C], s [B, d], m [B, d])``."""
    raise NotImplementedError("the fused Triton inference kernels are not implemented yet; use backend='eager'")


def semantic(model, visual: torch.Tensor) -> torch.Tensor:
    """Fused projector + DCSL sampler: ``visual [B, Dv] -> s [B, d]``."""
    raise NotImplementedError("the fused Triton Learner sampler is not implemented yet; use backend='eager'")
