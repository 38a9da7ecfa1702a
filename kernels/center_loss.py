"""Fused op 3: the stage-1 center constraint, forward and backward (docs/math.md, "Stage 1").

``logits[i, c] = -||r_i - mu_c||^2 / tau``, ``loss_i = CE(logits_i, y_i)`` for ``r [B, d]``,
centers ``mu [C, d]`` (no gradient), labels ``y [B]``. Neither kernel materialises more than one
``[BM, BN]`` tile of logits: a program owns ``BM`` rows and streams the centers ``BN`` classes at a
time (an online log-sum-exp, as flash-attention streams keys).

Softmax is shift-invariant per row, so the ``-||r_i||^2 / tau`` term of every logit of row i
cancels from the loss and from ``p``; the kernels use the shifted logits
``l_ic = (2 r_i.mu_c - ||mu_c||^2) / tau`` (no cancellation against a large ``||r_i||^2``):

* loss: ``loss_i = lse_i - l_{i,y_i}`` with ``lse_i = log sum_c exp(l_ic)`` (the shifted lse).
* gradient: ``d loss_i / d r_i = (2 / tau) sum_c (p_ic - [c = y_i]) mu_c``,
  ``p_ic = exp(l_ic - lse_i)``, i.e. ``(2 / tau) (E_p[mu] - mu_{y_i})`` (the ``r_i`` terms of
  ``d l / d r = -2 (r_i - mu_c) / tau`` cancel because ``sum_c p_ic = 1``).

The forward saves ``lse [B]`` (fp32, 4 bytes a row); the backward recomputes the logit tiles from
``r`` and ``mu`` and accumulates ``(p - onehot) @ mu`` over class tiles, one ``BD``-wide column
chunk of ``d`` per program. For a loss that will be differentiated, :func:`center_loss_train` does
both in one launch: each program forms its rows' lse, then their gradient on its column chunk, so
the backward is one multiply by the upstream gradient. Out-of-range labels are masked (no
out-of-bounds read); the launchers check their range when the labels are on the CPU (on CUDA that
check would sync the device).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from seda_fast import validation
from ._heuristics import check_matrix, check_vector, clamp_block, dot_mode
from ._launch import launch


@triton.jit
def _shifted_logits(r_ptr, mu_ptr, rows, c0, C, d, inv_tau,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                    LOWP: tl.constexpr, PREC: tl.constexpr):
    """fp32 ``[BM, BN]`` tile ``(2 r.mu_c - ||mu_c||^2) / tau`` for rows ``r_ptr[:rows]`` and classes
    ``c0 .. c0 + BN`` (``-inf`` for classes past ``C``)."""
    offs_m = tl.arange(0, BM)
    offs_c = c0 + tl.arange(0, BN)
    dots = tl.zeros((BM, BN), tl.float32)
    sq = tl.zeros((BN,), tl.float32)
    for k0 in range(0, d, BK):
        offs_k = k0 + tl.arange(0, BK)
        r = tl.load(r_ptr + offs_m[:, None] * d + offs_k[None, :],
                    mask=(offs_m[:, None] < rows) & (offs_k[None, :] < d), other=0.0)
        mu = tl.load(mu_ptr + offs_c[None, :] * d + offs_k[:, None],
                     mask=(offs_c[None, :] < C) & (offs_k[:, None] < d), other=0.0)  # [BK, BN]
        mu32 = mu.to(tl.float32)
        sq += tl.sum(mu32 * mu32, axis=0)
        if LOWP:
            dots = tl.dot(r.to(mu.dtype), mu, dots)
        else:
            dots = tl.dot(r.to(tl.float32), mu32, dots, input_precision=PREC)
    logits = (2.0 * dots - sq[None, :]) * inv_tau
    return tl.where(offs_c[None, :] < C, logits, float("-inf"))


@triton.jit
def _row_lse(r_ptr, mu_ptr, y, row0, B, C, d, inv_tau,
             BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr):
    """``(lse [BM], loss [BM])`` of rows ``row0 ..`` with labels ``y [BM]``: an online log-sum-exp
    over the class tiles, and ``lse - l_{i,y_i}``."""
    m = tl.full((BM,), float("-inf"), tl.float32)
    s = tl.zeros((BM,), tl.float32)
    target = tl.zeros((BM,), tl.float32)
    for c0 in range(0, C, BN):
        logits = _shifted_logits(r_ptr + row0 * d, mu_ptr, B - row0, c0, C, d, inv_tau, BM, BN, BK, LOWP, PREC)
        m_new = tl.maximum(m, tl.max(logits, axis=1))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(logits - m_new[:, None]), axis=1)
        m = m_new
        offs_c = c0 + tl.arange(0, BN)
        target += tl.sum(tl.where(offs_c[None, :] == y[:, None], logits, 0.0), axis=1)
    lse = m + tl.log(s)
    return lse, lse - target


@triton.jit
def _row_grad(r_ptr, mu_ptr, y, lse, row0, offs_d, B, C, d, inv_tau,
              BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr,
              LOWP: tl.constexpr, PREC: tl.constexpr):
    """fp32 ``[BM, BD]``: ``sum_c (p_ic - [c = y_i]) mu_c`` on the columns ``offs_d [BD]``, the logit
    tiles recomputed; ``lse = inf`` on padding rows makes their ``p`` 0."""
    acc = tl.zeros((BM, BD), tl.float32)
    dmask = offs_d < d
    for c0 in range(0, C, BN):
        logits = _shifted_logits(r_ptr + row0 * d, mu_ptr, B - row0, c0, C, d, inv_tau, BM, BN, BK, LOWP, PREC)
        offs_c = c0 + tl.arange(0, BN)
        dlogits = tl.exp(logits - lse[:, None]) - tl.where(offs_c[None, :] == y[:, None], 1.0, 0.0)
        mu = tl.load(mu_ptr + offs_c[:, None] * d + offs_d[None, :],
                     mask=(offs_c[:, None] < C) & dmask[None, :], other=0.0)  # [BN, BD]
        if LOWP:
            acc = tl.dot(dlogits.to(mu.dtype), mu, acc)
        else:
            acc = tl.dot(dlogits, mu.to(tl.float32), acc, input_precision=PREC)
    return acc


@triton.jit
def center_loss_fwd_kernel(r_ptr, mu_ptr, y_ptr, loss_ptr, lse_ptr, B, C, d, inv_tau,
                           BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                           LOWP: tl.constexpr, PREC: tl.constexpr):
    row0 = tl.program_id(0).to(tl.int64) * BM
    offs_m = row0 + tl.arange(0, BM)
    rmask = offs_m < B
    y = tl.load(y_ptr + offs_m, mask=rmask, other=-1).to(tl.int32)
    lse, loss = _row_lse(r_ptr, mu_ptr, y, row0, B, C, d, inv_tau, BM, BN, BK, LOWP, PREC)
    tl.store(lse_ptr + offs_m, lse, mask=rmask)
    tl.store(loss_ptr + offs_m, loss, mask=rmask)


@triton.jit
def center_loss_bwd_kernel(g_ptr, r_ptr, mu_ptr, y_ptr, lse_ptr, dr_ptr, B, C, d, inv_tau,
                           BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr,
                           LOWP: tl.constexpr, PREC: tl.constexpr):
    row0 = tl.program_id(0).to(tl.int64) * BM
    offs_m = row0 + tl.arange(0, BM)
    rmask = offs_m < B
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    y = tl.load(y_ptr + offs_m, mask=rmask, other=-1).to(tl.int32)
    lse = tl.load(lse_ptr + offs_m, mask=rmask, other=float("inf"))
    acc = _row_grad(r_ptr, mu_ptr, y, lse, row0, offs_d, B, C, d, inv_tau, BM, BN, BK, BD, LOWP, PREC)
    g = tl.load(g_ptr + offs_m, mask=rmask, other=0.0).to(tl.float32)
    dr = acc * (2.0 * inv_tau * g)[:, None]
    tl.store(dr_ptr + offs_m[:, None] * d + offs_d[None, :], dr.to(dr_ptr.dtype.element_ty),
             mask=rmask[:, None] & (offs_d[None, :] < d))


@triton.jit
def center_loss_train_kernel(r_ptr, mu_ptr, y_ptr, loss_ptr, dr_ptr, B, C, d, inv_tau, scale,
                             BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr,
                             LOWP: tl.constexpr, PREC: tl.constexpr):
    """Forward and gradient at once: ``scale * loss_i`` and ``scale * d loss_i / d r_i`` (the
    column-chunk programs ``program_id(1) > 0`` recompute the lse and store only the gradient)."""
    row0 = tl.program_id(0).to(tl.int64) * BM
    offs_m = row0 + tl.arange(0, BM)
    rmask = offs_m < B
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    y = tl.load(y_ptr + offs_m, mask=rmask, other=-1).to(tl.int32)
    lse, loss = _row_lse(r_ptr, mu_ptr, y, row0, B, C, d, inv_tau, BM, BN, BK, LOWP, PREC)
    tl.store(loss_ptr + offs_m, scale * loss, mask=rmask & (tl.program_id(1) == 0))
    lse = tl.where(rmask, lse, float("inf"))
    acc = _row_grad(r_ptr, mu_ptr, y, lse, row0, offs_d, B, C, d, inv_tau, BM, BN, BK, BD, LOWP, PREC)
    dr = acc * (2.0 * inv_tau * scale)
    tl.store(dr_ptr + offs_m[:, None] * d + offs_d[None, :], dr.to(dr_ptr.dtype.element_ty),
             mask=rmask[:, None] & (offs_d[None, :] < d))


def center_loss_blocks(batch: int, num_classes: int, d: int, dtype: torch.dtype) -> dict:
    """Block sizes: ``BM`` rows, ``BN`` classes and ``BK`` features per logit tile, ``BD`` gradient
    columns per backward program; all >= 16 (``tl.dot``) and clamped to the real widths.

    fp16/bf16: ``BM = 16`` up to 256 rows (4 warps, mma.sync), 64 beyond (8 warps, wgmma's M; at 4
    warps the backward needs 239 registers); fp32 (the parity path, FMA dots): ``BM = 16``, 32-wide
    tiles. sm_90a at d = 512, C = 10 and 1000: no spills (tests/test_training_ops.py)."""
    lowp = dtype != torch.float32
    BM = 64 if lowp and batch > 256 else 16
    return dict(BM=BM, BN=clamp_block(64 if lowp else 32, num_classes), BK=clamp_block(64 if lowp else 32, d),
                BD=clamp_block(128, d), num_warps=8 if BM == 64 else 4, num_stages=2)


def _check(r, centers, labels, temperature):
    check_matrix("r", r, None, None, batch_rows=True)
    B, d = r.shape
    check_matrix("centers", centers, None, d, r.dtype, r.device)
    C = centers.shape[0]
    check_labels(labels, B, C, r.device)
    if not isinstance(temperature, (int, float)) or not (0.0 < float(temperature) < float("inf")):
        raise ValueError(f"temperature must be a finite float > 0, got {temperature!r}")
    if r.numel() >= 2**31 or centers.numel() >= 2**31:
        raise ValueError("r and centers must have < 2^31 elements (int32 indexing inside a row block)")
    return B, C, d


def check_labels(labels, B, C, device) -> None:
    """``labels [B]`` int64/int32, contiguous, on ``device``; values in ``[0, C)`` checked when on the
    CPU (on a GPU the range check would sync)."""
    validation.check_labels(labels, B, C if labels.device.type == "cpu" else None, device, owner="the kernel",
                            dtypes=(torch.int64, torch.int32))
    if not labels.is_contiguous():
        raise ValueError("labels must be contiguous")


def center_loss_forward(r, centers, labels, temperature):
    """``r [B, d]``, ``centers [C, d]`` (r's dtype), ``labels [B]`` int, ``temperature > 0`` ->
    ``(loss [B] fp32, lse [B] fp32)``: per-row cross-entropy of ``-||r_i - mu_c||^2 / tau`` and the
    shifted log-sum-exp the backward needs."""
    B, C, d = _check(r, centers, labels, temperature)
    cfg = center_loss_blocks(B, C, d, r.dtype)
    lowp, prec = dot_mode(r.dtype, r.device)
    loss = torch.empty(B, device=r.device, dtype=torch.float32)
    lse = torch.empty(B, device=r.device, dtype=torch.float32)
    launch(center_loss_fwd_kernel, (triton.cdiv(B, cfg["BM"]),), r, centers, labels, loss, lse,
           B, C, d, 1.0 / float(temperature), BM=cfg["BM"], BN=cfg["BN"], BK=cfg["BK"], LOWP=lowp, PREC=prec,
           num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return loss, lse


def center_loss_backward(grad_loss, r, centers, labels, lse, temperature):
    """``grad_loss [B]`` (upstream gradient of each row's loss) and the forward's inputs and ``lse``
    -> ``grad_r [B, d]`` in r's dtype: ``grad_loss_i (2 / tau) sum_c (p_ic - [c = y_i]) mu_c``."""
    B, C, d = _check(r, centers, labels, temperature)
    check_vector("grad_loss", grad_loss, B, None, r.device)
    check_vector("lse", lse, B, torch.float32, r.device)
    cfg = center_loss_blocks(B, C, d, r.dtype)
    lowp, prec = dot_mode(r.dtype, r.device)
    grad_r = torch.empty_like(r)
    grid = (triton.cdiv(B, cfg["BM"]), triton.cdiv(d, cfg["BD"]))
    launch(center_loss_bwd_kernel, grid, grad_loss, r, centers, labels, lse, grad_r, B, C, d,
           1.0 / float(temperature), BM=cfg["BM"], BN=cfg["BN"], BK=cfg["BK"], BD=cfg["BD"], LOWP=lowp,
           PREC=prec, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return grad_r


def center_loss_train(r, centers, labels, temperature, scale: float):
    """The forward and its gradient in one launch, for a loss that will be differentiated:
    ``(loss [B] fp32, grad_r [B, d])``, ``scale * loss_i`` and ``scale * d loss_i / d r_i`` (r's dtype);
    ``scale = 1 / B`` makes their sums the mean's value and gradient."""
    B, C, d = _check(r, centers, labels, temperature)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite float, got {scale!r}")
    cfg = center_loss_blocks(B, C, d, r.dtype)
    lowp, prec = dot_mode(r.dtype, r.device)
    loss = torch.empty(B, device=r.device, dtype=torch.float32)
    grad_r = torch.empty_like(r)
    grid = (triton.cdiv(B, cfg["BM"]), triton.cdiv(d, cfg["BD"]))
    launch(center_loss_train_kernel, grid, r, centers, labels, loss, grad_r, B, C, d, 1.0 / float(temperature),
           float(scale), BM=cfg["BM"], BN=cfg["BN"], BK=cfg["BK"], BD=cfg["BD"], LOWP=lowp, PREC=prec,
           num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return loss, grad_r
