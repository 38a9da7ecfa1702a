"""Fused op 4: the category-center EMA as a deterministic per-class scatter-mean (SPEC "Projectors
and category centers"), in two launches so a distributed caller can all-reduce in between:

* :func:`class_sums`: ``z [B, d], labels [B] -> (sums [C, d] fp32, counts [C] fp32)``. A program
  owns ``BN`` classes x ``BK`` features and walks the batch row by row in order 0..B-1, adding
  row i to its class's fp32 accumulator. A row with a NaN/Inf in any feature is skipped (neither
  summed nor counted): the launcher computes the ``[B]`` row mask on the device
  (``torch.isfinite(z).all(1)``, no host sync), since a program sees only ``BK`` of the row's
  features. Every sum is therefore the sequential sum in batch order,
  whatever the grid: bitwise reproducible, no atomics (a row of another class block costs one
  scalar label load). That is also the order of the eager reference's one-hot sgemm on CPU (MKL)
  up to a few hundred rows, so the two agree bitwise there. Cost: a serial walk of B rows per
  program, fine for training batches (B <= a few thousand); a label-sorted segmented sum would be
  the large-B path.
* :func:`ema_update`: in place, for the classes with ``counts > 0``:
  ``mu_c <- alpha mu_c + (1 - alpha) sums_c / counts_c`` (fp32 math, IEEE division), or the mean
  itself when ``initialized[c]`` is False; then ``initialized[c] = True``. Absent classes are not
  written. A program owns ``BN`` whole classes (it reads their flags before writing them).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._heuristics import check_matrix, check_vector
from .center_loss import check_labels
from ._launch import launch


@triton.jit
def class_sums_kernel(z_ptr, y_ptr, ok_ptr, sums_ptr, counts_ptr, B, C, d,
                      BN: tl.constexpr, BK: tl.constexpr):
    c_lo = tl.program_id(0) * BN
    offs_c = c_lo + tl.arange(0, BN)
    offs_k = tl.program_id(1) * BK + tl.arange(0, BK)
    kmask = offs_k < d
    acc = tl.zeros((BN, BK), tl.float32)
    count = tl.zeros((BN,), tl.float32)
    z_row = z_ptr
    for i in range(0, B):
        y = tl.load(y_ptr + i).to(tl.int32)
        ok = tl.load(ok_ptr + i) != 0
        if ok & (y >= c_lo) & (y < c_lo + BN):
            z = tl.load(z_row + offs_k, mask=kmask, other=0.0).to(tl.float32)
            hit = offs_c == y
            acc += tl.where(hit[:, None], z[None, :], 0.0)
            count += tl.where(hit, 1.0, 0.0)
        z_row += d
    cmask = offs_c < C
    tl.store(sums_ptr + offs_c[:, None].to(tl.int64) * d + offs_k[None, :], acc,
             mask=cmask[:, None] & kmask[None, :])
    tl.store(counts_ptr + offs_c, count, mask=cmask & (tl.program_id(1) == 0))


@triton.jit
def ema_update_kernel(mu_ptr, init_ptr, sums_ptr, counts_ptr, C, d, alpha, one_minus_alpha,
                      BN: tl.constexpr, BK: tl.constexpr):
    offs_c = tl.program_id(0) * BN + tl.arange(0, BN)
    cmask = offs_c < C
    count = tl.load(counts_ptr + offs_c, mask=cmask, other=0.0)
    present = count > 0
    was_init = tl.load(init_ptr + offs_c, mask=cmask, other=0) != 0
    denom = tl.maximum(count, 1.0)
    rows = offs_c[:, None].to(tl.int64) * d
    for k0 in range(0, d, BK):
        offs_k = k0 + tl.arange(0, BK)
        mask = (cmask & present)[:, None] & (offs_k[None, :] < d)
        mu = tl.load(mu_ptr + rows + offs_k[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.div_rn(tl.load(sums_ptr + rows + offs_k[None, :], mask=mask, other=0.0), denom[:, None])
        ema = tl.where(was_init[:, None], alpha * mu + one_minus_alpha * mean, mean)
        tl.store(mu_ptr + rows + offs_k[None, :], ema.to(mu_ptr.dtype.element_ty), mask=mask)
    tl.store(init_ptr + offs_c, (was_init | present).to(tl.uint8), mask=cmask)


def update_blocks(num_classes: int, d: int) -> dict:
    """``BN`` classes x ``BK`` features per program (no ``tl.dot``, so any power of two works)."""
    return dict(BN=max(2, min(16, triton.next_power_of_2(num_classes))),
                BK=max(16, min(128, triton.next_power_of_2(d))), num_warps=4)


def class_sums(z, labels, num_classes: int):
    """``z [B, d]`` (fp32/fp16/bf16), ``labels [B]`` int in ``[0, C)`` -> ``(sums [C, d] fp32,
    counts [C] fp32)``: per-class sums in batch order and row counts, rows with a NaN/Inf left out."""
    check_matrix("z", z, None, None, batch_rows=True)
    B, d = z.shape
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    check_labels(labels, B, num_classes, z.device)
    if z.numel() >= 2**31:
        raise ValueError("z must have < 2^31 elements")
    cfg = update_blocks(num_classes, d)
    sums = torch.empty(num_classes, d, device=z.device, dtype=torch.float32)
    counts = torch.empty(num_classes, device=z.device, dtype=torch.float32)
    row_ok = torch.isfinite(z).all(dim=1).view(torch.uint8)
    grid = (triton.cdiv(num_classes, cfg["BN"]), triton.cdiv(d, cfg["BK"]))
    launch(class_sums_kernel, grid, z, labels, row_ok, sums, counts, B, num_classes, d,
           BN=cfg["BN"], BK=cfg["BK"], num_warps=cfg["num_warps"])
    return sums, counts


def ema_update(centers, initialized, sums, counts, momentum: float) -> None:
    """In place: ``centers [C, d]`` (fp32/fp16/bf16; math in fp32) and ``initialized [C]`` bool from
    ``sums [C, d]`` fp32 and ``counts [C]`` fp32 (:func:`class_sums`, all-reduced or not), with
    ``momentum`` = alpha in ``[0, 1]``."""
    check_matrix("centers", centers, None, None)
    C, d = centers.shape
    check_vector("initialized", initialized, C, torch.bool, centers.device)
    check_matrix("sums", sums, C, d, torch.float32, centers.device)
    check_vector("counts", counts, C, torch.float32, centers.device)
    if not isinstance(momentum, (int, float)) or not 0.0 <= float(momentum) <= 1.0:
        raise ValueError(f"momentum must be a float in [0, 1], got {momentum!r}")
    cfg = update_blocks(C, d)
    launch(ema_update_kernel, (triton.cdiv(C, cfg["BN"]),), centers, initialized.view(torch.uint8), sums, counts,
           C, d, float(momentum), 1.0 - float(momentum), BN=cfg["BN"], BK=cfg["BK"], num_warps=cfg["num_warps"])
