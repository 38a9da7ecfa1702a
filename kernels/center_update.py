"""Fused op 4: the category-center EMA as a deterministic per-class scatter-mean (SPEC "Projectors
and category centers"). One launch, or two for a distributed caller, who all-reduces in between:

* :func:`center_ema`: ``z [B, d], labels [B]`` -> ``centers [C, d]`` and ``initialized [C]`` updated
  in place: the class sums and counts (below) and then the EMA on them, in one launch.
* :func:`class_sums`: ``z [B, d], labels [B] -> (sums [C, d] fp32, counts [C] fp32)``.
* :func:`ema_update`: in place, for the classes with ``counts > 0``:
  ``mu_c <- alpha mu_c + (1 - alpha) sums_c / counts_c`` (fp32 math, IEEE division), or the mean
  itself when ``initialized[c]`` is False; then ``initialized[c] = True``. Absent classes are not
  written.

The sums: a program owns ``BN`` classes and every feature of them (it reads their flags before it
writes them, and it checks a whole row for NaN/Inf: a row with one is neither summed nor counted).
It walks the batch in order 0..B-1, ``RB`` rows at a time: the ``RB`` labels, then the rows of its
classes (masked loads: another class's row costs no traffic), none waiting on another row, so the
compiler can issue them together: a block costs about two memory round trips, not two per row. Rows are added one by one
in batch order into fp32 accumulators: every sum is the sequential sum in batch order whatever the
grid, bitwise reproducible, with no atomics. That is also the order of the eager reference's
one-hot sgemm on CPU (MKL) up to a few hundred rows, so the two agree bitwise there. The walk is
serial per program (about ``2 B / RB`` round trips); a label-sorted segmented sum would be the path
for batches far beyond a training step's.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._heuristics import check_matrix, check_vector
from .center_loss import check_labels
from ._launch import launch


@triton.jit
def _class_block_sums(z_ptr, y_ptr, B, d, c_lo, BN: tl.constexpr, DP: tl.constexpr, RB: tl.constexpr):
    """``(sums [BN, DP] fp32, counts [BN] fp32)`` of classes ``c_lo .. c_lo + BN - 1``: their finite
    rows added in batch order."""
    offs_c = c_lo + tl.arange(0, BN)
    offs_k = tl.arange(0, DP)
    kmask = offs_k < d
    acc = tl.zeros((BN, DP), tl.float32)
    count = tl.zeros((BN,), tl.float32)
    for i0 in range(0, B, RB):
        for j in tl.static_range(RB):
            i = i0 + j
            y = tl.load(y_ptr + i, mask=i < B, other=-1).to(tl.int32)
            mine = (y >= c_lo) & (y < c_lo + BN)
            z = tl.load(z_ptr + i.to(tl.int64) * d + offs_k, mask=kmask & mine, other=0.0).to(tl.float32)
            ok = tl.sum(((z != z) | (tl.abs(z) == float("inf"))).to(tl.int32), axis=0) == 0
            hit = (offs_c == y) & ok
            acc += tl.where(hit[:, None], z[None, :], 0.0)
            count += tl.where(hit, 1.0, 0.0)
    return acc, count


@triton.jit
def _ema_block(mu_ptr, init_ptr, sums, counts, offs_c, C, d, alpha, one_minus_alpha, DP: tl.constexpr):
    """The EMA of classes ``offs_c [BN]`` (whole rows) from their ``sums [BN, DP]`` and ``counts [BN]``."""
    cmask = offs_c < C
    present = counts > 0
    was_init = tl.load(init_ptr + offs_c, mask=cmask, other=0) != 0
    offs_k = tl.arange(0, DP)
    mask = (cmask & present)[:, None] & (offs_k[None, :] < d)
    ptrs = mu_ptr + offs_c[:, None].to(tl.int64) * d + offs_k[None, :]
    mu = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.div_rn(sums, tl.maximum(counts, 1.0)[:, None])
    ema = tl.where(was_init[:, None], alpha * mu + one_minus_alpha * mean, mean)
    tl.store(ptrs, ema.to(mu_ptr.dtype.element_ty), mask=mask)
    tl.store(init_ptr + offs_c, (was_init | present).to(tl.uint8), mask=cmask)


@triton.jit
def center_ema_kernel(z_ptr, y_ptr, mu_ptr, init_ptr, B, C, d, alpha, one_minus_alpha,
                      BN: tl.constexpr, DP: tl.constexpr, RB: tl.constexpr):
    c_lo = tl.program_id(0) * BN
    acc, count = _class_block_sums(z_ptr, y_ptr, B, d, c_lo, BN, DP, RB)
    _ema_block(mu_ptr, init_ptr, acc, count, c_lo + tl.arange(0, BN), C, d, alpha, one_minus_alpha, DP)


@triton.jit
def class_sums_kernel(z_ptr, y_ptr, sums_ptr, counts_ptr, B, C, d,
                      BN: tl.constexpr, DP: tl.constexpr, RB: tl.constexpr):
    c_lo = tl.program_id(0) * BN
    acc, count = _class_block_sums(z_ptr, y_ptr, B, d, c_lo, BN, DP, RB)
    offs_c = c_lo + tl.arange(0, BN)
    offs_k = tl.arange(0, DP)
    cmask = offs_c < C
    tl.store(sums_ptr + offs_c[:, None].to(tl.int64) * d + offs_k[None, :], acc,
             mask=cmask[:, None] & (offs_k[None, :] < d))
    tl.store(counts_ptr + offs_c, count, mask=cmask)


@triton.jit
def ema_update_kernel(mu_ptr, init_ptr, sums_ptr, counts_ptr, C, d, alpha, one_minus_alpha,
                      BN: tl.constexpr, DP: tl.constexpr):
    offs_c = tl.program_id(0) * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, DP)
    cmask = offs_c < C
    counts = tl.load(counts_ptr + offs_c, mask=cmask, other=0.0)
    sums = tl.load(sums_ptr + offs_c[:, None].to(tl.int64) * d + offs_k[None, :],
                   mask=cmask[:, None] & (offs_k[None, :] < d), other=0.0)
    _ema_block(mu_ptr, init_ptr, sums, counts, offs_c, C, d, alpha, one_minus_alpha, DP)


def update_blocks(num_classes: int, d: int) -> dict:
    """``BN`` classes x all ``d`` features (``DP``, padded to a power of two) per program, walking
    ``RB`` rows at a time (no ``tl.dot``, so any power of two works): the fp32 sums tile stays at
    8192 values or fewer and the ``RB`` rows in flight at about 64 values a thread."""
    DP = max(16, triton.next_power_of_2(d))
    num_warps = 8 if DP >= 512 else 4
    return dict(BN=max(2, min(16, triton.next_power_of_2(num_classes), 8192 // DP)), DP=DP,
                RB=max(4, min(32, 64 * 32 * num_warps // DP)), num_warps=num_warps)


def _check_z_labels(z, labels, num_classes: int) -> tuple[int, int]:
    check_matrix("z", z, None, None, batch_rows=True)
    B, d = z.shape
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    check_labels(labels, B, num_classes, z.device)
    if z.numel() >= 2**31:
        raise ValueError("z must have < 2^31 elements")
    return B, d


def _check_momentum(momentum) -> float:
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= float(momentum) <= 1.0:
        raise ValueError(f"momentum must be a float in [0, 1], got {momentum!r}")
    return float(momentum)


def _check_centers(centers, initialized) -> tuple[int, int]:
    check_matrix("centers", centers, None, None)
    C, d = centers.shape
    check_vector("initialized", initialized, C, torch.bool, centers.device)
    return C, d


def class_sums(z, labels, num_classes: int):
    """``z [B, d]`` (fp32/fp16/bf16), ``labels [B]`` int in ``[0, C)`` -> ``(sums [C, d] fp32,
    counts [C] fp32)``: per-class sums in batch order and row counts, rows with a NaN/Inf left out."""
    B, d = _check_z_labels(z, labels, num_classes)
    cfg = update_blocks(num_classes, d)
    sums = torch.empty(num_classes, d, device=z.device, dtype=torch.float32)
    counts = torch.empty(num_classes, device=z.device, dtype=torch.float32)
    launch(class_sums_kernel, (triton.cdiv(num_classes, cfg["BN"]),), z, labels, sums, counts, B, num_classes, d,
           BN=cfg["BN"], DP=cfg["DP"], RB=cfg["RB"], num_warps=cfg["num_warps"])
    return sums, counts


def ema_update(centers, initialized, sums, counts, momentum: float) -> None:
    """In place: ``centers [C, d]`` (fp32/fp16/bf16; math in fp32) and ``initialized [C]`` bool from
    ``sums [C, d]`` fp32 and ``counts [C]`` fp32 (:func:`class_sums`, all-reduced or not), with
    ``momentum`` = alpha in ``[0, 1]``."""
    C, d = _check_centers(centers, initialized)
    check_matrix("sums", sums, C, d, torch.float32, centers.device)
    check_vector("counts", counts, C, torch.float32, centers.device)
    alpha = _check_momentum(momentum)
    cfg = update_blocks(C, d)
    launch(ema_update_kernel, (triton.cdiv(C, cfg["BN"]),), centers, initialized.view(torch.uint8), sums, counts,
           C, d, alpha, 1.0 - alpha, BN=cfg["BN"], DP=cfg["DP"], num_warps=cfg["num_warps"])


def center_ema(centers, initialized, z, labels, momentum: float) -> None:
    """In place, in one launch: :func:`class_sums` of ``z [B, d]`` by ``labels [B]`` and then
    :func:`ema_update` of ``centers [C, d]`` and ``initialized [C]`` bool with ``momentum``."""
    C, d = _check_centers(centers, initialized)
    B, _ = _check_z_labels(z, labels, C)
    if z.shape[1] != d or z.device != centers.device:
        raise ValueError(f"z must be [B, {d}] on {centers.device} like centers, got {list(z.shape)} on {z.device}")
    alpha = _check_momentum(momentum)
    cfg = update_blocks(C, d)
    launch(center_ema_kernel, (triton.cdiv(C, cfg["BN"]),), z, labels, centers, initialized.view(torch.uint8),
           B, C, d, alpha, 1.0 - alpha, BN=cfg["BN"], DP=cfg["DP"], RB=cfg["RB"], num_warps=cfg["num_warps"])
