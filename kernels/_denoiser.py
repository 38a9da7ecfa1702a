"""The denoiser ``D(x_t, t, c) -> (x0_hat, a)`` for training: shared row-block bodies and the
deterministic weight-gradient kernel, used by ``denoiser_x0_loss.py`` and ``translator_unroll.py``.

Forward (``reference.denoise``), weights ``nn.Linear`` layout ``[out, in]``::

    a   = x_t W_x^T + cond + e_t                  # [B, H]   (cond = c W_c + b_a, e_t per row)
    h_0 = SiLU(a)
    z_l = h_l W_l^T + b_l,  h_{l+1} = h_l + SiLU(z_l)   for l < L-1
    x0_hat = h_{L-1} W_o^T + b_o                  # [B, d]

Saved for the backward: ``a`` and the residual pre-activations ``z [B, L-1, H]`` (input dtype).
Every ``h_l = SiLU(a) + sum_{j<l} SiLU(z_j)`` is recomputed elementwise where it is needed (same
fp32 operations in the same order as the forward, so bitwise the forward's ``h`` in fp32); no
matmul is recomputed.

* :func:`denoiser_rows_forward` / :func:`denoiser_block_forward`: the forward on one row block.
* :func:`denoiser_rows_backward` / :func:`denoiser_block_backward`: activation gradients of one row
  block given ``ga_up = dL/da`` and ``gx0 = dL/dx0_hat``: ``gh = gx0 W_o``, then for
  l = L-2..0: ``gz_l = gh * SiLU'(z_l)``, ``gh <- gh + gz_l W_l``; finally
  ``ga = ga_up + gh * SiLU'(a)`` (the gradient of ``cond`` and ``e_t``). ``gz`` and ``ga`` are
  stored in the input dtype for the weight gradients; ``gh`` stays in an fp32 scratch slab.
* ``denoiser_wgrad_kernel`` (one program per ``BN x BK`` weight tile, :func:`launch_wgrad`):
  ``dW = G^T X`` and ``db = sum_rows G`` with the tile looping over ALL rows in a fixed order, so
  the result is deterministic (no atomics, no split over rows). :func:`denoiser_weight_grads`
  makes three launches: ``W_x`` (``G = ga``, ``X = x_t``), every ``W_l`` at once (grid axis 2 =
  layer; ``G = gz_l``, ``X = h_l``), ``W_o`` (``G = gx0``, ``X = h_{L-1}``).

Math in fp32 whatever the input dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _blocks as blk
from ._heuristics import check_hidden, clamp_block, check_matrix, check_vector
from ._launch import launch


@triton.jit
def denoiser_rows_forward(x_ptr, x_stride, e_ptr, e_stride, cond_ptr, rows, wx_ptr, wh_ptr, bh_ptr, wo_ptr, bo_ptr,
                          x0_ptr, x0_stride, x0_rows, a_ptr, z_ptr, h_buf, d, H, n_hidden,
                          SAVE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                          LOWP: tl.constexpr, PREC: tl.constexpr):
    """The denoiser on one row block: ``x0_hat`` to ``x0_ptr`` (``x0_rows`` real rows); with ``SAVE``
    also ``a`` (row stride H) and ``z`` (row stride (L-1) H) of the ``rows`` real rows. ``e_ptr``
    rows have stride ``e_stride`` (0: one ``[H]`` row for all); ``h_buf``: two fp32 ``[BM, H]``
    scratch slabs (ping-pong). Ends after the output store, without a barrier."""
    zs = n_hidden * H
    for n0 in range(0, H, BN):
        acc = blk.matmul_tile(tl.zeros((BM, BN), tl.float32), x_ptr, x_stride, rows, wx_ptr, n0, H, d,
                              BM, BN, BK, LOWP, PREC)
        acc += blk.load_tile(cond_ptr, H, rows, n0, H, BM, BN)
        acc += blk.load_tile(e_ptr, e_stride, rows, n0, H, BM, BN)
        if SAVE:
            blk.store_tile(a_ptr, H, rows, n0, H, acc, BM, BN)
        blk.store_tile(h_buf, H, BM, n0, H, blk.silu(acc), BM, BN)
    tl.debug_barrier()
    for layer in range(n_hidden):
        src = h_buf + (layer % 2) * (BM * H)
        dst = h_buf + ((layer + 1) % 2) * (BM * H)
        for n0 in range(0, H, BN):
            acc = blk.matmul_tile(tl.zeros((BM, BN), tl.float32), src, H, BM, wh_ptr + layer * H * H, n0, H, H,
                                  BM, BN, BK, LOWP, PREC)
            acc += blk.load_vec(bh_ptr + layer * H, n0, H, BN)[None, :]
            if SAVE:
                blk.store_tile(z_ptr + layer * H, zs, rows, n0, H, acc, BM, BN)
            blk.store_tile(dst, H, BM, n0, H, blk.load_tile(src, H, BM, n0, H, BM, BN) + blk.silu(acc), BM, BN)
        tl.debug_barrier()
    last = h_buf + (n_hidden % 2) * (BM * H)
    blk.linear_rows(last, H, BM, wo_ptr, bo_ptr, H, d, x0_ptr, x0_stride, x0_rows, BM, BN, BK, LOWP, PREC)


@triton.jit
def denoiser_block_forward(pid, x_ptr, e_ptr, cond_ptr, wx_ptr, wh_ptr, bh_ptr, wo_ptr, bo_ptr,
                           x0_ptr, a_ptr, z_ptr, scratch_ptr, B, d, H, n_hidden,
                           BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                           LOWP: tl.constexpr, PREC: tl.constexpr):
    """:func:`denoiser_rows_forward` (saving ``a``, ``z``) on row block ``pid`` of full ``[B, *]``
    tensors (``e`` per row), with the block's two ``[BM, H]`` slabs of ``scratch``."""
    row0 = pid * BM
    rows = B - row0
    denoiser_rows_forward(x_ptr + row0 * d, d, e_ptr + row0 * H, H, cond_ptr + row0 * H, rows,
                          wx_ptr, wh_ptr, bh_ptr, wo_ptr, bo_ptr, x0_ptr + row0 * d, d, rows,
                          a_ptr + row0 * H, z_ptr + row0 * (n_hidden * H), scratch_ptr + pid * (2 * BM * H),
                          d, H, n_hidden, True, BM, BN, BK, LOWP, PREC)


@triton.jit
def _grad_h_epilogue(gh, layer, gh_buf, gz_ptr, z_ptr, zs, a_ptr, ga_up_ptr, ga_ptr, gsum_ptr, H, rows, n0,
                     HAS_UP: tl.constexpr, HAS_SUM: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """``gh [BM, BN]`` = dL/dh_layer (columns n0..): for layer > 0 keep it (the residual term of the
    next phase) and store ``gz_{layer-1} = gh SiLU'(z_{layer-1})``; for layer 0 store
    ``ga = gh SiLU'(a) (+ ga_up)`` and, with ``HAS_SUM``, add it to the fp32 ``gsum`` rows."""
    if layer > 0:
        blk.store_tile(gh_buf, H, BM, n0, H, gh, BM, BN)
        z = blk.load_tile(z_ptr + (layer - 1) * H, zs, rows, n0, H, BM, BN)
        blk.store_tile(gz_ptr + (layer - 1) * H, zs, rows, n0, H, gh * blk.dsilu(z), BM, BN)
    else:
        ga = gh * blk.dsilu(blk.load_tile(a_ptr, H, rows, n0, H, BM, BN))
        if HAS_UP:
            ga += blk.load_tile(ga_up_ptr, H, rows, n0, H, BM, BN)
        blk.store_tile(ga_ptr, H, rows, n0, H, ga, BM, BN)
        if HAS_SUM:
            blk.store_tile(gsum_ptr, H, rows, n0, H, blk.load_tile(gsum_ptr, H, rows, n0, H, BM, BN) + ga, BM, BN)


@triton.jit
def denoiser_rows_backward(gx0_ptr, gx0_stride, rows, a_ptr, z_ptr, wh_ptr, wo_ptr, gh_buf, gz_ptr, ga_ptr,
                           ga_up_ptr, gsum_ptr, d, H, n_hidden,
                           HAS_UP: tl.constexpr, HAS_SUM: tl.constexpr,
                           BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                           LOWP: tl.constexpr, PREC: tl.constexpr):
    """Activation gradients of the denoiser on one row block, from ``gx0 = dL/dx0_hat`` (row stride
    ``gx0_stride``) and the saved ``a`` / ``z``: ``gh = gx0 W_o``, then for l = L-2..0
    ``gz_l = gh SiLU'(z_l)``, ``gh <- gh + gz_l W_l``; finally ``ga = gh SiLU'(a) (+ ga_up)``.
    Writes ``gz`` and ``ga`` (and ``gsum += ga``); ``gh`` lives in the fp32 ``[BM, H]`` slab
    ``gh_buf``. Ends with a barrier."""
    zs = n_hidden * H
    # dL/dh_{L-1} = gx0 W_o  (W_o [d, H])
    for n0 in range(0, H, BN):
        gh = blk.matmul_tile(tl.zeros((BM, BN), tl.float32), gx0_ptr, gx0_stride, rows, wo_ptr, n0, H, d,
                             BM, BN, BK, LOWP, PREC, W_KN=True)
        _grad_h_epilogue(gh, n_hidden, gh_buf, gz_ptr, z_ptr, zs, a_ptr, ga_up_ptr, ga_ptr, gsum_ptr,
                         H, rows, n0, HAS_UP, HAS_SUM, BM, BN)
    tl.debug_barrier()
    # dL/dh_l = dL/dh_{l+1} + gz_l W_l  (W_l [H, H]), l = L-2 .. 0
    for i in range(n_hidden):
        layer = n_hidden - 1 - i
        for n0 in range(0, H, BN):
            gh = blk.matmul_tile(blk.load_tile(gh_buf, H, BM, n0, H, BM, BN), gz_ptr + layer * H, zs, rows,
                                 wh_ptr + layer * H * H, n0, H, H, BM, BN, BK, LOWP, PREC, W_KN=True)
            _grad_h_epilogue(gh, layer, gh_buf, gz_ptr, z_ptr, zs, a_ptr, ga_up_ptr, ga_ptr, gsum_ptr,
                             H, rows, n0, HAS_UP, HAS_SUM, BM, BN)
        tl.debug_barrier()


@triton.jit
def denoiser_block_backward(pid, gx0_ptr, ga_up_ptr, a_ptr, z_ptr, wh_ptr, wo_ptr, gh_scratch_ptr, gz_ptr, ga_ptr,
                            B, d, H, n_hidden, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                            LOWP: tl.constexpr, PREC: tl.constexpr):
    """:func:`denoiser_rows_backward` (with the upstream ``ga_up``) on row block ``pid`` of full
    ``[B, *]`` tensors, with the block's ``[BM, H]`` slab of ``gh_scratch``."""
    row0 = pid * BM
    ga_rows = ga_ptr + row0 * H
    denoiser_rows_backward(gx0_ptr + row0 * d, d, B - row0, a_ptr + row0 * H, z_ptr + row0 * (n_hidden * H), wh_ptr,
                           wo_ptr, gh_scratch_ptr + pid * (BM * H), gz_ptr + row0 * (n_hidden * H), ga_rows,
                           ga_up_ptr + row0 * H, ga_rows, d, H, n_hidden, True, False, BM, BN, BK, LOWP, PREC)


@triton.jit
def denoiser_wgrad_kernel(g_ptr, g_stride, x_ptr, x_stride, z_ptr, zs, n_res0, dw_ptr, db_ptr, B, N, Kdim,
                          FROM_H: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr,
                          BN: tl.constexpr, BK: tl.constexpr, BB: tl.constexpr,
                          LOWP: tl.constexpr, PREC: tl.constexpr):
    """``dW[n, k] = sum_b G[b, n] X[b, k]`` (``dW [N, Kdim]``; with ``ACC`` added to ``dW``'s values)
    and ``db = sum_b G[b, :]`` (stored) for one ``BN x BK`` tile of weight ``program_id(2)``, rows
    walked in order ``0, BB, 2 BB, ..``. ``LOWP``: both dot operands in ``G``'s (fp16/bf16) dtype.

    ``G``: column block ``program_id(2) * N`` of rows ``g_ptr + b * g_stride``. ``X``: ``x_t``
    (``x_stride``), or with ``FROM_H`` the recomputed ``h_j = SiLU(a) + sum_{i<j} SiLU(z_i)``,
    ``j = n_res0 + program_id(2)`` (``x_ptr`` = ``a [B, Kdim]``, ``z [B, L-1, Kdim]`` row stride ``zs``).
    """
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    layer = tl.program_id(2)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = pid_k * BK + tl.arange(0, BK)
    nmask = offs_n < N
    kmask = offs_k < Kdim
    g_ptr += layer * N
    dw_ptr += layer * N * Kdim
    dw_tile = dw_ptr + offs_n[:, None] * Kdim + offs_k[None, :]
    if ACC:
        acc = tl.load(dw_tile, mask=nmask[:, None] & kmask[None, :], other=0.0).to(tl.float32)
    else:
        acc = tl.zeros((BN, BK), tl.float32)
    gsum = tl.zeros((BN,), tl.float32)
    for b0 in range(0, B, BB):
        offs_b = (b0 + tl.arange(0, BB)).to(tl.int64)
        bmask = offs_b < B
        gt = tl.load(g_ptr + offs_b[None, :] * g_stride + offs_n[:, None],
                     mask=bmask[None, :] & nmask[:, None], other=0.0).to(tl.float32)  # [BN, BB]
        xmask = bmask[:, None] & kmask[None, :]
        if FROM_H:
            x = blk.silu(tl.load(x_ptr + offs_b[:, None] * Kdim + offs_k[None, :], mask=xmask,
                                 other=0.0).to(tl.float32))
            for j in range(n_res0 + layer):
                x += blk.silu(tl.load(z_ptr + offs_b[:, None] * zs + j * Kdim + offs_k[None, :], mask=xmask,
                                      other=0.0).to(tl.float32))
        else:
            x = tl.load(x_ptr + offs_b[:, None] * x_stride + offs_k[None, :], mask=xmask,
                        other=0.0).to(tl.float32)
        if LOWP:
            acc = tl.dot(gt.to(g_ptr.dtype.element_ty), x.to(g_ptr.dtype.element_ty), acc)
        else:
            acc = tl.dot(gt, x, acc, input_precision=PREC)
        if HAS_BIAS:
            gsum += tl.sum(gt, axis=1)
    tl.store(dw_tile, acc.to(dw_ptr.dtype.element_ty), mask=nmask[:, None] & kmask[None, :])
    if HAS_BIAS:
        if pid_k == 0:
            db_ptr += layer * N
            tl.store(db_ptr + offs_n, gsum.to(db_ptr.dtype.element_ty), mask=nmask)


# --------------------------------------------------------------------------- launchers


def wgrad_blocks(N: int, Kdim: int, dtype: torch.dtype) -> dict:
    """Weight-gradient tile ``BN x BK`` over ``BB`` rows per step: fp16/bf16 ``64 x 64 x 32``
    (wgmma's M = 64, one warpgroup), fp32 (parity path) ``32 x 32 x 32``; clamped to the widths."""
    lowp = dtype != torch.float32
    return dict(BN=clamp_block(64 if lowp else 32, N), BK=clamp_block(64 if lowp else 32, Kdim), BB=32,
                num_warps=4, num_stages=2)


def _check_weights(w_x, w_hidden, b_hidden, w_out, b_out, d, dtype, device):
    check_matrix("w_x", w_x, None, d, dtype, device)
    H = w_x.shape[0]
    n_hidden = check_hidden(w_hidden, b_hidden, H, dtype, device)
    check_matrix("w_out", w_out, d, H, dtype, device)
    check_vector("b_out", b_out, d, dtype, device)
    return H, n_hidden


def check_saved(grad_a, x_t, a, z, w_x, w_hidden, w_out):
    """Checks of a denoiser backward's common arguments (``x_t [B, d]`` sets dtype and device; ``a``,
    ``grad_a [B, H]``, ``z [B, L-1, H]``, ``w_x [H, d]``, ``w_hidden [L-1, H, H]``, ``w_out [d, H]``);
    returns ``(B, d, H, L-1)``."""
    check_matrix("x_t", x_t, None, None, batch_rows=True)
    B, d = x_t.shape
    dtype, device = x_t.dtype, x_t.device
    check_matrix("w_x", w_x, None, d, dtype, device)
    H = w_x.shape[0]
    if not isinstance(w_hidden, torch.Tensor) or w_hidden.dim() != 3 or tuple(w_hidden.shape[1:]) != (H, H):
        got = list(w_hidden.shape) if isinstance(w_hidden, torch.Tensor) else type(w_hidden).__name__
        raise ValueError(f"w_hidden must have shape [L-1, {H}, {H}], got {got}")
    n_hidden = w_hidden.shape[0]
    check_hidden(w_hidden, w_hidden.new_empty(n_hidden, H), H, dtype, device)  # b_hidden: not needed here
    check_matrix("w_out", w_out, d, H, dtype, device)
    check_matrix("grad_a", grad_a, B, H, dtype, device, batch_rows=True)
    check_matrix("a", a, B, H, dtype, device, batch_rows=True)
    if not isinstance(z, torch.Tensor) or tuple(z.shape) != (B, n_hidden, H):
        got = list(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"z must have shape [{B}, {n_hidden}, {H}], got {got}")
    if z.dtype != dtype or z.device != device or not z.is_contiguous():
        raise ValueError(f"z must be a contiguous {dtype} tensor on {device}")
    return B, d, H, n_hidden


def denoiser_weight_grads(ga, gz, gx0, x_t, a, z, w_x, w_hidden, w_out, lowp, prec):
    """``(grad_w_x, grad_w_hidden, grad_b_hidden, grad_w_out, grad_b_out)`` of the denoiser from the
    activation gradients ``ga [B, H]``, ``gz [B, L-1, H]``, ``gx0 [B, d]`` and the saved ``x_t``, ``a``,
    ``z`` (each ``h_l`` recomputed from ``a`` and ``z``): 3 launches, 2 when L = 1."""
    B, d = x_t.shape
    H, n_hidden = w_x.shape[0], w_hidden.shape[0]
    gw_x = torch.empty_like(w_x)
    gw_h = torch.empty_like(w_hidden)
    gb_h = w_hidden.new_empty(n_hidden, H)
    gw_o = torch.empty_like(w_out)
    gb_o = w_out.new_empty(d)
    common = dict(z=z if n_hidden else a, zs=max(n_hidden, 1) * H, B=B, lowp=lowp, prec=prec)
    launch_wgrad(ga, H, x_t, d, 0, gw_x, None, H, d, 1, from_h=False, **common)
    if n_hidden:
        launch_wgrad(gz, n_hidden * H, a, H, 0, gw_h, gb_h, H, H, n_hidden, from_h=True, **common)
    launch_wgrad(gx0, d, a, H, n_hidden, gw_o, gb_o, d, H, 1, from_h=True, **common)
    return gw_x, gw_h, gb_h, gw_o, gb_o


def launch_wgrad(g, g_stride, x, x_stride, n_res0, dw, db, N, Kdim, layers, *, z, zs, B, lowp, prec,
                 from_h, acc=False):
    """One :func:`denoiser_wgrad_kernel` launch: ``dW [layers, N, Kdim] (+)= G^T X`` over ``B`` rows and,
    when ``db`` is given, ``db [layers, N] = sum_rows G``. Tiles from :func:`wgrad_blocks` for ``G``'s
    dtype; ``z``/``zs`` are read only with ``from_h``."""
    blocks = wgrad_blocks(N, Kdim, g.dtype)
    grid = (triton.cdiv(N, blocks["BN"]), triton.cdiv(Kdim, blocks["BK"]), layers)
    launch(denoiser_wgrad_kernel, grid, g, g_stride, x, x_stride, z, zs, n_res0, dw, dw if db is None else db,
           B, N, Kdim, FROM_H=from_h, HAS_BIAS=db is not None, ACC=acc, LOWP=lowp, PREC=prec, **blocks)
