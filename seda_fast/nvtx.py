"""NVTX ranges that cost nothing without a GPU: :func:`nvtx_range` marks the model's calls for
Nsight Systems (re-exported by :mod:`seda_fast.tools.profiling` with the other profiling helpers)."""
from __future__ import annotations

import contextlib

import torch


def _nvtx_usable() -> bool:
    return torch.cuda.is_available() and not torch.compiler.is_compiling()


@contextlib.contextmanager
def nvtx_range(name: str):
    """``with nvtx_range("seda/infer"): ...`` marks the block in Nsight Systems on CUDA."""
    pushed = False
    if _nvtx_usable():
        try:
            torch.cuda.nvtx.range_push(name)
            pushed = True
        except Exception:  # NVTX missing from this build: profiling must never break a run
            pushed = False
    try:
        yield
    finally:
        if pushed:
            torch.cuda.nvtx.range_pop()
