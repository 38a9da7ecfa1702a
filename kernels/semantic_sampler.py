"""Fused op 1: visual projector + LayerNorm + the whole K1-step Learner (DCSL) DDIM loop.

``visual [B, Dv] -> (z [B, d] fp32, s [B, d] in the input dtype)`` in ONE launch. A program owns
``BM`` rows and runs the full reverse loop k = K..1 on them: ``c W_c + b_a`` once, then per step
the denoiser (``denoise_step``) reading row k-1 of the ``[K, H]`` time-embedding table and of the
``[K, 2]`` DDIM table.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _blocks as blk
from ._launch import launch
from ._heuristics import check_hidden, check_matrix, check_tables, check_vector, dot_mode, pick_blocks


@triton.jit
def semantic_sampler_kernel(
        v_ptr, z_ptr, s_ptr, scratch_ptr,
        wv_ptr, bv_ptr, ln_w_ptr, ln_b_ptr, ln_eps,
        wx_ptr, wc_ptr, bc_ptr, wh_ptr, bh_ptr, wo_ptr, bo_ptr,
        e_tab_ptr, ddim_ptr, start_c0,
        B, Dv, d, H, n_hidden, K, zero,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
        LOWP: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    row0 = pid * BM
    rows = B - row0
    slab = scratch_ptr + pid * (BM * (2 * d + 3 * H))
    x_buf = slab                      # [BM, d] diffusion state
    x0_buf = slab + BM * d            # [BM, d] z, then x0_hat
    cond_buf = slab + 2 * BM * d      # [BM, H] c W_c + b_a
    h_buf = cond_buf + BM * H         # 2 x [BM, H]

    # z = LayerNorm(v W_v + b_v) into x0_buf; z out (fp32) and x = sqrt(abar_T) z
    blk.linear_layernorm_rows(v_ptr + row0 * Dv, Dv, rows, wv_ptr, bv_ptr, ln_w_ptr, ln_b_ptr, ln_eps,
                              Dv, d, x0_buf, BM, BN, BK, LOWP, PREC)
    for n0 in range(0, d, BN):
        z = blk.load_tile(x0_buf, d, BM, n0, d, BM, BN)
        blk.store_tile(z_ptr + row0 * d, d, rows, n0, d, z, BM, BN)
        blk.store_tile(x_buf, d, BM, n0, d, start_c0 * z, BM, BN)
    # loop invariant: cond = z W_c + b_a
    blk.linear_rows(x0_buf, d, BM, wc_ptr, bc_ptr, d, H, cond_buf, H, BM, BM, BN, BK, LOWP, PREC)
    tl.debug_barrier()
    for step in range(K):
        k = K - 1 - step  # table row of step K - step
        j = zero * step  # opaque 0: keeps address math inside the loop (see _blocks.py)
        x_buf = x_buf + j
        x0_buf = x0_buf + j
        cond_buf = cond_buf + j
        h_buf = h_buf + j
        a_k = tl.load(ddim_ptr + 2 * k)
        b_k = tl.load(ddim_ptr + 2 * k + 1)
        blk.denoise_step(x_buf, x0_buf, cond_buf, h_buf, e_tab_ptr + k * H, a_k, b_k,
                         wx_ptr, wh_ptr, bh_ptr, wo_ptr, bo_ptr, d, H, n_hidden,
                         BM, BN, BK, LOWP, PREC)
    for n0 in range(0, d, BN):
        blk.store_tile(s_ptr + row0 * d, d, rows, n0, d, blk.load_tile(x_buf, d, BM, n0, d, BM, BN), BM, BN)


def semantic_sample(visual, proj_w, proj_b, ln_w, ln_b, ln_eps, w_x, w_c, b_c, w_hidden, b_hidden,
                    w_out, b_out, e_table, ddim, start_c0):
    """Projector + LayerNorm + K-step Learner sampler in one launch.

    Shapes: ``visual [B, Dv]``, ``proj_w [d, Dv]``, ``proj_b/ln_w/ln_b [d]``, ``w_x/w_c [H, d]``,
    ``b_c [H]``, ``w_hidden [L-1, H, H]``, ``b_hidden [L-1, H]``, ``w_out [d, H]``, ``b_out [d]``,
    ``e_table [K, H]`` fp32 (row k-1 = e(tau_k)), ``ddim [K, 2]`` fp32 (row k-1 = (a_k, b_k)).
    All weights share ``visual``'s dtype (fp32/fp16/bf16) and device.
    Returns ``(z [B, d] fp32, s [B, d] visual.dtype)``.
    """
    check_matrix("visual", visual, None, None, batch_rows=True)
    B, Dv = visual.shape
    dtype, device = visual.dtype, visual.device
    check_matrix("proj_w", proj_w, None, Dv, dtype, device)
    d = proj_w.shape[0]
    for name, t in (("proj_b", proj_b), ("ln_w", ln_w), ("ln_b", ln_b), ("b_out", b_out)):
        check_vector(name, t, d, dtype, device)
    check_matrix("w_x", w_x, None, d, dtype, device)
    H = w_x.shape[0]
    check_matrix("w_c", w_c, H, d, dtype, device)
    check_vector("b_c", b_c, H, dtype, device)
    check_matrix("w_out", w_out, d, H, dtype, device)
    n_hidden = check_hidden(w_hidden, b_hidden, H, dtype, device)
    K = check_tables(e_table, ddim, H, device)
    cfg = pick_blocks(B, d, H, Dv, dtype)
    lowp, prec = dot_mode(dtype, device)
    grid = triton.cdiv(B, cfg.BM)
    z = torch.empty(B, d, device=device, dtype=torch.float32)
    s = torch.empty(B, d, device=device, dtype=dtype)
    scratch = torch.empty(grid * cfg.BM * (2 * d + 3 * H), device=device, dtype=torch.float32)
    wh = w_hidden if n_hidden else w_out  # any valid pointer when there is no residual layer
    bh = b_hidden if n_hidden else b_out
    launch(semantic_sampler_kernel, (grid,),
           visual, z, s, scratch, proj_w, proj_b, ln_w, ln_b, float(ln_eps),
           w_x, w_c, b_c, wh, bh, w_out, b_out, e_table, ddim, float(start_c0),
           B, Dv, d, H, n_hidden, K, 0,
           BM=cfg.BM, BN=cfg.BN, BK=cfg.BK, LOWP=lowp, PREC=prec,
           num_warps=cfg.num_warps, num_stages=cfg.num_stages, maxnreg=cfg.maxnreg)
    return z, s

