"""Fused op 4: the category-center EMA as a deterministic per-class scatter-mean (docs/math.md,
"Projectors and class centers"):

* :func:`center_ema`: ``z [B, d], labels [B]`` -> ``centers [C, d]`` and ``initialized [C]`` updated
  in place: the class sums and counts (below), then the EMA on them. One launch up to ``R`` rows;
  beyond, two: the sums of each ``R``-row split, then their fixed-order reduction and the EMA.
* :func:`class_sums`: ``z [B, d], labels [B] -> (sums [C, d] fp32, counts [C] fp32)``, for a
  distributed caller, who all-reduces them before :func:`ema_update`.
* :func:`ema_update`: in place, for the classes with ``counts > 0``:
  ``mu_c <- alpha mu_c + (1 - alpha) sums_c / counts_c`` (fp32 math, IEEE division), or the mean
  itself when ``initialized[c]`` is False; then ``initialized[c] = True``. Absent classes are not
  written. It takes the sums of ``S`` row splits ``[S, C, d]`` and adds them in split order.

The sums: a program owns ``BN`` classes and every feature of them (so it checks a whole row for
NaN/Inf itself: a row with one is neither summed nor counted), and one split of at most ``R`` rows.
It walks its rows in order, ``RB`` at a time: the ``RB`` labels, then the rows of its classes
(masked loads: another class's row costs no traffic), none waiting on another row, so the compiler
can issue them together: a block costs about two memory round trips, not two per row. Rows are
added one by one in batch order into fp32 accumulators, so every sum is fixed by ``R`` alone (the
sequential sum in batch order when one split covers the batch), bitwise reproducible, with no
atomics. (The splits are added in split order by the EMA launch, and by ``torch.sum`` in
:func:`class_sums`, the distributed path: both fixed, not bitwise the same as each other.) Up to
``R`` rows that is also the order of the eager reference's one-hot sgemm on CPU (MKL, up to a few
hundred rows), so the two agree bitwise there. The EMA of a one-launch update is done by
the program that summed (it reads its classes' flags before it writes them); with splits, by a
second launch, a program per class block.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._heuristics import check_matrix, check_vector
from .center_loss import check_labels
from ._launch import launch


@triton.jit
def _class_block_sums(z_ptr, y_ptr, row0, B, d, c_lo, BN: tl.constexpr, DP: tl.constexpr, RB: tl.constexpr):
    """``(sums [BN, DP] fp32, counts [BN] fp32)`` of classes ``c_lo .. c_lo + BN - 1``: their finite
    rows among ``row0 .. B - 1`` added in batch order."""
    offs_c = c_lo + tl.arange(0, BN)
    offs_k = tl.arange(0, DP)
    kmask = offs_k < d
    acc = tl.zeros((BN, DP), tl.float32)
    count = tl.zeros((BN,), tl.float32)
    for i0 in range(row0, B, RB):
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
    tl.debug_barrier()  # every warp has read the flags (each holds a copy) before one thread writes them
    tl.store(init_ptr + offs_c, (was_init | present).to(tl.uint8), mask=cmask)


@triton.jit
def center_ema_kernel(z_ptr, y_ptr, mu_ptr, init_ptr, B, C, d, alpha, one_minus_alpha,
                      BN: tl.constexpr, DP: tl.constexpr, RB: tl.constexpr):
    c_lo = tl.program_id(0) * BN
    acc, count = _class_block_sums(z_ptr, y_ptr, 0, B, d, c_lo, BN, DP, RB)
    _ema_block(mu_ptr, init_ptr, acc, count, c_lo + tl.arange(0, BN), C, d, alpha, one_minus_alpha, DP)


@triton.jit
def class_sums_kernel(z_ptr, y_ptr, sums_ptr, counts_ptr, B, C, d, R,
                      BN: tl.constexpr, DP: tl.constexpr, RB: tl.constexpr):
    """Split ``program_id(1)``'s sums into ``sums [S, C, d]``, ``counts [S, C]``."""
    c_lo = tl.program_id(0) * BN
    split = tl.program_id(1)
    row0 = split * R
    acc, count = _class_block_sums(z_ptr, y_ptr, row0, tl.minimum(B, row0 + R), d, c_lo, BN, DP, RB)
    offs_c = c_lo + tl.arange(0, BN)
    offs_k = tl.arange(0, DP)
    cmask = offs_c < C
    rows = (split * C + offs_c).to(tl.int64)  # rows of the [S * C, d] view
    tl.store(sums_ptr + rows[:, None] * d + offs_k[None, :], acc, mask=cmask[:, None] & (offs_k[None, :] < d))
    tl.store(counts_ptr + rows, count, mask=cmask)


@triton.jit
def ema_update_kernel(mu_ptr, init_ptr, sums_ptr, counts_ptr, C, d, S, alpha, one_minus_alpha,
                      BN: tl.constexpr, DP: tl.constexpr):
    offs_c = tl.program_id(0) * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, DP)
    cmask = offs_c < C
    mask = cmask[:, None] & (offs_k[None, :] < d)
    counts = tl.zeros((BN,), tl.float32)
    sums = tl.zeros((BN, DP), tl.float32)
    for split in range(0, S):  # in split order: fixed whatever the grid
        rows = (split * C + offs_c).to(tl.int64)
        counts += tl.load(counts_ptr + rows, mask=cmask, other=0.0)
        sums += tl.load(sums_ptr + rows[:, None] * d + offs_k[None, :], mask=mask, other=0.0)
    _ema_block(mu_ptr, init_ptr, sums, counts, offs_c, C, d, alpha, one_minus_alpha, DP)


def update_blocks(num_classes: int, d: int) -> dict:
    """``BN`` classes x all ``d`` features (``DP``, padded to a power of two) per program, walking
    ``RB`` rows at a time, and at most ``R`` rows (a multiple of ``RB``) per program (no ``tl.dot``,
    so any power of two works): the fp32 sums tile stays at 8192 values or fewer and the ``RB`` rows
    in flight at about 64 values a thread. ``maxnreg=255``: unbounded, ptxas held the walking kernels
    to 128 registers and spilled (2 to 10 stores under triton 3.6 at RB = 32 or 16 warps); with the
    whole register file it keeps the rows in flight in registers (one program per SM runs anyway)."""
    DP = max(16, triton.next_power_of_2(d))
    num_warps = 8 if DP >= 512 else 4
    RB = max(4, min(32, 64 * 32 * num_warps // DP))
    return dict(BN=max(2, min(16, triton.next_power_of_2(num_classes), 8192 // DP)), DP=DP, RB=RB,
                R=max(RB, 512 // RB * RB), num_warps=num_warps, maxnreg=255)


def _rows_per_split(cfg: dict, rows_per_split) -> int:
    if rows_per_split is None:
        return cfg["R"]
    if isinstance(rows_per_split, bool) or not isinstance(rows_per_split, int) or rows_per_split < 1:
        raise ValueError(f"rows_per_split must be an int >= 1, got {rows_per_split!r}")
    return rows_per_split


def _check_z_labels(z, labels, num_classes: int) -> tuple[int, int]:
    check_matrix("z", z, None, None, batch_rows=True)
    B, d = z.shape
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    check_labels(labels, B, num_classes, z.device)
    if z.numel() >= 2**31:
        raise ValueError("z must have < 2^31 elements")
    if d > 65536:  # a program holds whole rows
        raise ValueError(f"z must be at most 65536 wide for the fused center update, got {d}; use backend='eager'")
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


def _split_sums(z, labels, num_classes: int, cfg: dict, R: int):
    B, d = z.shape
    S = max(1, triton.cdiv(B, R))
    if S > 65535:  # the grid's second dimension
        raise ValueError(f"rows_per_split={R} cuts {B} rows into {S} splits; at most 65535 are launched")
    sums = torch.empty(S, num_classes, d, device=z.device, dtype=torch.float32)
    counts = torch.empty(S, num_classes, device=z.device, dtype=torch.float32)
    launch(class_sums_kernel, (triton.cdiv(num_classes, cfg["BN"]), S), z, labels, sums, counts, B, num_classes, d,
           R, BN=cfg["BN"], DP=cfg["DP"], RB=cfg["RB"], num_warps=cfg["num_warps"], maxnreg=cfg["maxnreg"])
    return sums, counts


def class_sums(z, labels, num_classes: int, rows_per_split: int | None = None):
    """``z [B, d]`` (fp32/fp16/bf16), ``labels [B]`` int in ``[0, C)`` -> ``(sums [C, d] fp32,
    counts [C] fp32)``: per-class sums in batch order and row counts, rows with a NaN/Inf left out;
    past ``rows_per_split`` rows (default :func:`update_blocks`' ``R``) the splits' sums are added by
    ``torch.sum`` (deterministic)."""
    B, d = _check_z_labels(z, labels, num_classes)
    cfg = update_blocks(num_classes, d)
    sums, counts = _split_sums(z, labels, num_classes, cfg, _rows_per_split(cfg, rows_per_split))
    if sums.shape[0] == 1:
        return sums[0], counts[0]
    return sums.sum(0), counts.sum(0)


def _launch_ema(centers, initialized, sums, counts, alpha: float, cfg: dict) -> None:
    C, d = centers.shape
    S = sums.shape[0] if sums.dim() == 3 else 1
    launch(ema_update_kernel, (triton.cdiv(C, cfg["BN"]),), centers, initialized.view(torch.uint8), sums, counts,
           C, d, S, alpha, 1.0 - alpha, BN=cfg["BN"], DP=cfg["DP"], num_warps=cfg["num_warps"])


def ema_update(centers, initialized, sums, counts, momentum: float) -> None:
    """In place: ``centers [C, d]`` (fp32/fp16/bf16; math in fp32) and ``initialized [C]`` bool from
    ``sums [C, d]`` fp32 and ``counts [C]`` fp32 (:func:`class_sums`, all-reduced or not), or from
    ``S`` splits' ``[S, C, d]`` and ``[S, C]`` (added in split order), with ``momentum`` = alpha in
    ``[0, 1]``."""
    C, d = _check_centers(centers, initialized)
    if sums.dim() == 3:
        S = sums.shape[0]
        if tuple(sums.shape[1:]) != (C, d) or sums.dtype != torch.float32 or not sums.is_contiguous() \
                or sums.device != centers.device:
            raise ValueError(f"sums must be a contiguous float32 [S, {C}, {d}] tensor on {centers.device}, got "
                             f"{sums.dtype} {list(sums.shape)} on {sums.device}")
        check_matrix("counts", counts, S, C, torch.float32, centers.device)
    else:
        check_matrix("sums", sums, C, d, torch.float32, centers.device)
        check_vector("counts", counts, C, torch.float32, centers.device)
    _launch_ema(centers, initialized, sums, counts, _check_momentum(momentum), update_blocks(C, d))


def center_ema(centers, initialized, z, labels, momentum: float, rows_per_split: int | None = None) -> None:
    """In place: :func:`class_sums` of ``z [B, d]`` by ``labels [B]`` and then :func:`ema_update` of
    ``centers [C, d]`` and ``initialized [C]`` bool with ``momentum``: one launch up to
    ``rows_per_split`` rows (default :func:`update_blocks`' ``R``), else the splits' sums and then the
    EMA, two."""
    C, d = _check_centers(centers, initialized)
    B, _ = _check_z_labels(z, labels, C)
    if z.shape[1] != d or z.device != centers.device:
        raise ValueError(f"z must be [B, {d}] on {centers.device} like centers, got {list(z.shape)} on {z.device}")
    alpha = _check_momentum(momentum)
    cfg = update_blocks(C, d)
    R = _rows_per_split(cfg, rows_per_split)
    if B > R:
        _launch_ema(centers, initialized, *_split_sums(z, labels, C, cfg, R), alpha, cfg)
        return
    launch(center_ema_kernel, (triton.cdiv(C, cfg["BN"]),), z, labels, centers, initialized.view(torch.uint8),
           B, C, d, alpha, 1.0 - alpha, BN=cfg["BN"], DP=cfg["DP"], RB=cfg["RB"], num_warps=cfg["num_warps"],
           maxnreg=cfg["maxnreg"])
