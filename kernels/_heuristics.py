"""Block-size heuristic and argument checks shared by the launchers (plain Python, no device query).

Regimes (latency and throughput; B = batch rows), tiles ``BM x BN x BK``, warps, pipeline stages:

* latency, ``B <= 256``, fp16/bf16: ``16 x 64 x 64``, 4 warps, 2 stages. ``BM = 16`` is the
  smallest ``tl.dot`` M, so B = 64 still spreads over 4 programs (mma.sync tensor cores).
* throughput, ``B > 256``, fp16/bf16: ``64 x 32 x 32``, one warpgroup (4 warps), 2 stages: M = 64
  is what Hopper's wgmma needs, and every streamed weight tile is reused by 64 rows. ``BK = 64``
  is spill-free under triton 3.7.1 but spills under 3.6.0, the GPU image's compiler (e.g. the
  stage-2 unroll's forward, 41 spill stores; the translator at B = 16384, 32), so ``BK = 32``:
  zero spills under both (``make compat`` runs the report with 3.6.0).
* fp32 (any B): ``16 x 32 x 32``, 4 warps, 2 stages. fp32 is the parity path (IEEE fp32 FMA dots
  unless ``torch.backends.cuda.matmul.allow_tf32``), not the fast one.

These are the largest tiles the sm_90a compile report (``python -m seda_fast.tools.compile_report``)
shows free of register spills, under triton 3.6.0 and 3.7.1, for the default model (d=512, H=1024, L=2): e.g. ``64 x 64 x 64``
with 2 stages or ``128 x 64 x 64`` with 8 warps spill. ``maxnreg=255`` lets ptxas use the whole
register file (left alone it stops at 128 and spills). Tiles are clamped to the next power of
two of the real widths (>= 16, the ``tl.dot`` minimum), so small configs do not iterate over
empty masked lanes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

LATENCY_MAX_BATCH = 256


@dataclass(frozen=True)
class Blocks:
    BM: int
    BN: int
    BK: int
    num_warps: int
    num_stages: int
    maxnreg: int = 255
    epi_parts: int = 1  # phase kernels: the epilogue runs on this many column parts of the tile, one at a time
    split_k: int = 1    # phase kernels: each output tile's K loop is cut into this many slices, one program each
    tma: bool = False   # inference phase kernels: GEMM operands loaded through tensor descriptors (TMA)


def clamp_block(block: int, width: int) -> int:
    """``block`` shrunk to the next power of two of ``width``, never below 16 (``tl.dot``'s minimum)."""
    return max(16, min(block, triton.next_power_of_2(max(int(width), 1))))


def pick_blocks(batch: int, d: int, H: int, din: int | None = None,
                dtype: torch.dtype = torch.bfloat16) -> Blocks:
    """Row block and tiles for a fused sampler over ``batch`` rows (see the module docstring)."""
    if dtype == torch.float32:
        BM, BN, BK, warps, stages = 16, 32, 32, 4, 2
    elif batch <= LATENCY_MAX_BATCH:
        BM, BN, BK, warps, stages = 16, 64, 64, 4, 2
    else:
        BM, BN, BK, warps, stages = 64, 32, 32, 4, 2
    widest = max(d, H, din or 0)
    return Blocks(BM, clamp_block(BN, max(d, H)), clamp_block(BK, widest), warps, stages)


def dot_mode(dtype: torch.dtype, device: torch.device) -> tuple[bool, str]:
    """``(LOWP, PREC)`` for ``tl.dot``: fp16/bf16 operands go to the tensor cores as they are on
    CUDA; CPU means the interpreter, where everything is cast to fp32. fp32 on CUDA uses IEEE fp32
    unless ``torch.backends.cuda.matmul.allow_tf32`` is on (torch's own switch, default off)."""
    if device.type != "cuda":
        return False, "ieee"
    if dtype in (torch.float16, torch.bfloat16):
        return True, "ieee"
    return False, ("tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee")


SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


INT32_LIMIT = 2**31


def check_matrix(name, t, rows, cols, dtype=None, device=None, batch_rows: bool = False) -> None:
    """``t`` must be a contiguous 2-D tensor ``[rows, cols]`` (None = any) of ``dtype`` on ``device``.

    Kernels address batch-row tensors (``batch_rows=True``) from an int64 row base, so they may
    exceed 2^31 elements; every other matrix (weights, tables) is indexed with 32-bit offsets and
    must stay below 2^31 elements."""
    want = f"[{'*' if rows is None else rows}, {'*' if cols is None else cols}]"
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {want}, got {type(t).__name__}")
    if t.dim() != 2 or (rows is not None and t.shape[0] != rows) or (cols is not None and t.shape[1] != cols):
        raise ValueError(f"{name} must have shape {want}, got {list(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must not be empty, got shape {list(t.shape)}")
    if not batch_rows and t.numel() >= INT32_LIMIT:
        raise ValueError(f"{name} has {t.numel()} elements; the fused kernels index it with 32-bit offsets "
                         f"(limit {INT32_LIMIT - 1})")
    _check_common(name, t, dtype, device)


def check_vector(name, t, n, dtype=None, device=None) -> None:
    """``t`` must be a contiguous ``[n]`` tensor of ``dtype`` on ``device``."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape [{n}], got {type(t).__name__}")
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}], got {list(t.shape)}")
    _check_common(name, t, dtype, device)


def _check_common(name, t, dtype, device) -> None:
    if dtype is None and t.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{name} must be float32/float16/bfloat16, got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device}, got {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def check_hidden(w_hidden, b_hidden, H, dtype, device) -> int:
    """``w_hidden [L-1, H, H]`` and ``b_hidden [L-1, H]`` (L-1 may be 0); returns L-1."""
    if not isinstance(w_hidden, torch.Tensor) or w_hidden.dim() != 3 or tuple(w_hidden.shape[1:]) != (H, H):
        got = list(w_hidden.shape) if isinstance(w_hidden, torch.Tensor) else type(w_hidden).__name__
        raise ValueError(f"w_hidden must have shape [L-1, {H}, {H}], got {got}")
    _check_common("w_hidden", w_hidden, dtype, device)
    if w_hidden.numel() >= INT32_LIMIT:
        raise ValueError(f"w_hidden has {w_hidden.numel()} elements; the fused kernel indexes it with int32")
    n = w_hidden.shape[0]
    if not isinstance(b_hidden, torch.Tensor) or b_hidden.dim() != 2 or tuple(b_hidden.shape) != (n, H):
        got = list(b_hidden.shape) if isinstance(b_hidden, torch.Tensor) else type(b_hidden).__name__
        raise ValueError(f"b_hidden must have shape [{n}, {H}], got {got}")
    _check_common("b_hidden", b_hidden, dtype, device)
    return n


def check_tables(e_table, ddim, H, device) -> int:
    """``e_table [K, H]`` and ``ddim [K, 2]``, both fp32 on ``device``; returns K."""
    check_matrix("e_table", e_table, None, H, torch.float32, device)
    K = e_table.shape[0]
    check_matrix("ddim", ddim, K, 2, torch.float32, device)
    return K
