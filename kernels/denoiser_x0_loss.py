"""Fused op 7: forward noising + denoiser + x0 loss, the random-t diffusion term of both stages.

Forward (``denoiser_x0_loss_fwd_kernel``, one launch, a program per ``BM`` rows)::

    x_t    = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps        # coef [B, 2] = per-row (sqrt(abar_t), sqrt(1 - abar_t))
    (x0_hat, a) = D(x_t, e_t, cond)                        # _denoiser.denoiser_block_forward
    loss_b = sum_j (x0_hat[b, j] - x0[b, j])^2             # [B] fp32; the MSE is sum_b loss_b / (B d)

``x_t``, ``x0_hat``, ``a`` and the residual pre-activations ``z`` are saved for the backward.
Backward (``denoiser_x0_loss_bwd_kernel``): ``gx0 = 2 g_b (x0_hat - x0)`` from the per-row upstream
gradient ``g [B]``, then the denoiser's activation backward (with ``dL/da`` from the center
constraint in stage 1); the weight gradients are the denoiser's three deterministic launches
(:func:`_denoiser.denoiser_weight_grads`). The targets ``x0`` and ``eps`` get no gradient: the
spec puts the diffusion target under stop-gradient and the noise is a random draw.

``x0``/``eps`` may be of any float dtype (read as fp32, so an fp32 target stays fp32 in the loss
under autocast, as in the reference); weights, ``e_t``, ``cond`` and the stored activations share
one dtype. Launches: forward 1, backward 4 (3 when L = 1).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _blocks as blk
from ._heuristics import check_matrix, dot_mode, pick_blocks
from ._launch import launch
from ._denoiser import (_check_weights, check_saved, denoiser_block_backward, denoiser_block_forward,
                             denoiser_weight_grads)


@triton.jit
def denoiser_x0_loss_fwd_kernel(tgt_ptr, eps_ptr, coef_ptr, e_ptr, cond_ptr, wx_ptr, wh_ptr, bh_ptr, wo_ptr, bo_ptr,
                                xt_ptr, x0_ptr, a_ptr, z_ptr, loss_ptr, scratch_ptr, B, d, H, n_hidden,
                                BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                                LOWP: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    row0 = pid * BM
    rows = B - row0
    offs_m = tl.arange(0, BM)
    rmask = offs_m < rows
    sa = tl.load(coef_ptr + (row0 + offs_m) * 2, mask=rmask, other=0.0)
    sb = tl.load(coef_ptr + (row0 + offs_m) * 2 + 1, mask=rmask, other=0.0)
    tgt_rows = tgt_ptr + row0 * d
    x0_rows = x0_ptr + row0 * d
    for n0 in range(0, d, BN):
        x = sa[:, None] * blk.load_tile(tgt_rows, d, rows, n0, d, BM, BN) \
            + sb[:, None] * blk.load_tile(eps_ptr + row0 * d, d, rows, n0, d, BM, BN)
        blk.store_tile(xt_ptr + row0 * d, d, rows, n0, d, x, BM, BN)
    tl.debug_barrier()
    denoiser_block_forward(pid, xt_ptr, e_ptr, cond_ptr, wx_ptr, wh_ptr, bh_ptr, wo_ptr, bo_ptr, x0_ptr, a_ptr, z_ptr,
                           scratch_ptr, B, d, H, n_hidden, BM, BN, BK, LOWP, PREC)
    tl.debug_barrier()
    sq = tl.zeros((BM,), tl.float32)
    for n0 in range(0, d, BN):  # x0_hat as stored (in its dtype), like F.mse_loss reads it
        diff = blk.load_tile(x0_rows, d, rows, n0, d, BM, BN) - blk.load_tile(tgt_rows, d, rows, n0, d, BM, BN)
        sq += tl.sum(diff * diff, axis=1)
    tl.store(loss_ptr + row0 + offs_m, sq, mask=rmask)


@triton.jit
def denoiser_x0_loss_bwd_kernel(gloss_ptr, tgt_ptr, x0_ptr, ga_up_ptr, a_ptr, z_ptr, wh_ptr, wo_ptr,
                                gx0_ptr, gh_scratch_ptr, gz_ptr, ga_ptr, B, d, H, n_hidden,
                                BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                                LOWP: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    row0 = pid * BM
    rows = B - row0
    offs_m = tl.arange(0, BM)
    g = tl.load(gloss_ptr + row0 + offs_m, mask=offs_m < rows, other=0.0)
    gx0_rows = gx0_ptr + row0 * d
    for n0 in range(0, d, BN):  # dL/dx0_hat = 2 g_b (x0_hat - x0)
        diff = blk.load_tile(x0_ptr + row0 * d, d, rows, n0, d, BM, BN) \
            - blk.load_tile(tgt_ptr + row0 * d, d, rows, n0, d, BM, BN)
        blk.store_tile(gx0_rows, d, rows, n0, d, 2.0 * g[:, None] * diff, BM, BN)
    tl.debug_barrier()
    denoiser_block_backward(pid, gx0_ptr, ga_up_ptr, a_ptr, z_ptr, wh_ptr, wo_ptr, gh_scratch_ptr, gz_ptr, ga_ptr,
                            B, d, H, n_hidden, BM, BN, BK, LOWP, PREC)


# --------------------------------------------------------------------------- launchers


def _check_targets(target, eps, coef):
    check_matrix("target", target, None, None, batch_rows=True)
    B, d = target.shape
    check_matrix("eps", eps, B, d, None, target.device, batch_rows=True)
    check_matrix("coef", coef, B, 2, torch.float32, target.device, batch_rows=True)
    return B, d


def denoiser_x0_loss_forward(target, eps, coef, e_t, cond, w_x, w_hidden, b_hidden, w_out, b_out):
    """``target [B, d]`` (x0), ``eps [B, d]`` (any float dtypes), ``coef [B, 2]`` fp32 per-row
    ``(sqrt(abar_t), sqrt(1 - abar_t))``, ``e_t [B, H]``, ``cond [B, H]``, ``w_x [H, d]``,
    ``w_hidden [L-1, H, H]``, ``b_hidden [L-1, H]``, ``w_out [d, H]``, ``b_out [d]`` (weights,
    ``e_t``, ``cond`` in one dtype) -> ``(loss [B] fp32 = per-row sum of (x0_hat - x0)^2, a [B, H],
    x_t [B, d], x0_hat [B, d], z [B, L-1, H])``, the last four in the weights' dtype. One launch."""
    B, d = _check_targets(target, eps, coef)
    dtype, device = w_x.dtype if isinstance(w_x, torch.Tensor) else None, target.device
    H, n_hidden = _check_weights(w_x, w_hidden, b_hidden, w_out, b_out, d, dtype, device)
    check_matrix("e_t", e_t, B, H, dtype, device, batch_rows=True)
    check_matrix("cond", cond, B, H, dtype, device, batch_rows=True)
    cfg = pick_blocks(B, d, H, None, dtype)
    lowp, prec = dot_mode(dtype, device)
    grid = triton.cdiv(B, cfg.BM)
    x_t, x0 = torch.empty(B, d, device=device, dtype=dtype), torch.empty(B, d, device=device, dtype=dtype)
    a = torch.empty(B, H, device=device, dtype=dtype)
    z = torch.empty(B, n_hidden, H, device=device, dtype=dtype)
    loss = torch.empty(B, device=device, dtype=torch.float32)
    scratch = torch.empty(grid * 2 * cfg.BM * H, device=device, dtype=torch.float32)
    wh, bh, zp = (w_hidden, b_hidden, z) if n_hidden else (w_out, b_out, a)  # any valid pointer
    launch(denoiser_x0_loss_fwd_kernel, (grid,), target, eps, coef, e_t, cond, w_x, wh, bh, w_out, b_out,
           x_t, x0, a, zp, loss, scratch, B, d, H, n_hidden, BM=cfg.BM, BN=cfg.BN, BK=cfg.BK, LOWP=lowp,
           PREC=prec, num_warps=cfg.num_warps, num_stages=cfg.num_stages, maxnreg=cfg.maxnreg)
    return loss, a, x_t, x0, z


def denoiser_x0_loss_backward(grad_loss, grad_a, target, x_t, x0_hat, a, z, w_x, w_hidden, w_out):
    """Gradients of :func:`denoiser_x0_loss_forward` from ``grad_loss [B]`` (fp32, per row) and
    ``grad_a [B, H]``, with its saved ``x_t``, ``x0_hat``, ``a``, ``z``. Returns
    ``(grad_a_total (= the gradient of e_t and cond), grad_w_x, grad_w_hidden, grad_b_hidden, grad_w_out,
    grad_b_out)`` in the weights' dtype, weight gradients deterministic (fixed row order).
    Launches: 4 (3 when L = 1)."""
    B, d, H, n_hidden = check_saved(grad_a, x_t, a, z, w_x, w_hidden, w_out)
    dtype, device = x_t.dtype, x_t.device
    check_matrix("target", target, B, d, None, device, batch_rows=True)
    check_matrix("x0_hat", x0_hat, B, d, dtype, device, batch_rows=True)
    if not isinstance(grad_loss, torch.Tensor) or tuple(grad_loss.shape) != (B,) or grad_loss.dtype != torch.float32 \
            or grad_loss.device != device or not grad_loss.is_contiguous():
        raise ValueError(f"grad_loss must be a contiguous float32 [{B}] tensor on {device}")
    cfg = pick_blocks(B, d, H, None, dtype)
    lowp, prec = dot_mode(dtype, device)
    grid = triton.cdiv(B, cfg.BM)
    gx0 = torch.empty(B, d, device=device, dtype=dtype)
    gh_scratch = torch.empty(grid * cfg.BM * H, device=device, dtype=torch.float32)
    gz = torch.empty(B, n_hidden, H, device=device, dtype=dtype)
    ga = torch.empty(B, H, device=device, dtype=dtype)
    wh, zp, gzp = (w_hidden, z, gz) if n_hidden else (w_out, a, ga)  # any valid pointer
    launch(denoiser_x0_loss_bwd_kernel, (grid,), grad_loss, target, x0_hat, grad_a, a, zp, wh, w_out, gx0,
           gh_scratch, gzp, ga, B, d, H, n_hidden, BM=cfg.BM, BN=cfg.BN, BK=cfg.BK, LOWP=lowp, PREC=prec,
           num_warps=cfg.num_warps, num_stages=cfg.num_stages, maxnreg=cfg.maxnreg)
    return (ga, *denoiser_weight_grads(ga, gz, gx0, x_t, a, z, w_x, w_hidden, w_out, lowp, prec))
