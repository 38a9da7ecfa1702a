"""Fused op 2: the K2-step Translator (DCST) DDIM loop with PFIN's gated update, then the head.

``(s [B, d], z [B, d], xi [B, d] or None) -> (logits [B, C], m [B, d])`` in ONE launch. A program
owns ``BM`` rows: ``c W_c + b_a`` with ``c = s`` once, ``x = sqrt(abar_T) s + sqrt(1 - abar_T) xi``,
``m = z``; per step k = K..1 the denoiser gives ``x0_hat``, then
``p = m W_pm + x0_hat W_pu + e_k + b_p``, ``delta = SiLU(p) W_pd + b_pd``,
``g = sigmoid(m W_gm + x0_hat W_gu + b_g)``, ``m <- m + g delta``, ``x <- a_k x + b_k x0_hat``;
finally ``logits = m W_h + b_h``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _blocks as blk
from ._heuristics import check_hidden, check_matrix, check_tables, check_vector, dot_mode, pick_blocks
from ._launch import launch


@triton.jit
def translator_pfin_kernel(
        s_ptr, z_ptr, xi_ptr, logits_ptr, m_out_ptr, scratch_ptr,
        wx_ptr, wc_ptr, bc_ptr, wh_ptr, bh_ptr, wo_ptr, bo_ptr,
        wpm_ptr, wpu_ptr, bp_ptr, wpd_ptr, bpd_ptr, wgm_ptr, wgu_ptr, bg_ptr,
        head_w_ptr, head_b_ptr,
        e_tab_ptr, ddim_ptr, start_c0, start_c1,
        B, d, H, C, n_hidden, K, zero,
        HAS_NOISE: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
        LOWP: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    row0 = pid * BM
    rows = B - row0
    slab = scratch_ptr + pid * (BM * (5 * d + 3 * H))
    x_buf = slab                  # [BM, d] diffusion state
    x0_buf = slab + BM * d        # [BM, d] x0_hat of the current step
    m_buf = slab + 2 * BM * d     # 2 x [BM, d] PFIN state (ping-pong)
    g_buf = slab + 4 * BM * d     # [BM, d] PFIN gate (own buffer: d may exceed H)
    cond_buf = slab + 5 * BM * d  # [BM, H]
    h_buf = cond_buf + BM * H     # 2 x [BM, H]

    for n0 in range(0, d, BN):
        x = start_c0 * blk.load_tile(s_ptr + row0 * d, d, rows, n0, d, BM, BN)
        if HAS_NOISE:
            x += start_c1 * blk.load_tile(xi_ptr + row0 * d, d, rows, n0, d, BM, BN)
        blk.store_tile(x_buf, d, BM, n0, d, x, BM, BN)
        blk.store_tile(m_buf, d, BM, n0, d, blk.load_tile(z_ptr + row0 * d, d, rows, n0, d, BM, BN), BM, BN)
    blk.linear_rows(s_ptr + row0 * d, d, rows, wc_ptr, bc_ptr, d, H, cond_buf, H, BM, BM, BN, BK, LOWP, PREC)
    tl.debug_barrier()
    for step in range(K):
        k = K - 1 - step  # table row of step K - step
        j = zero * step  # opaque 0: keeps address math inside the loop (see _blocks.py)
        x_buf = x_buf + j
        x0_buf = x0_buf + j
        cond_buf = cond_buf + j
        h_buf = h_buf + j
        m_buf = m_buf + j
        g_buf = g_buf + j
        e_ptr = e_tab_ptr + k * H
        blk.denoise_step(x_buf, x0_buf, cond_buf, h_buf, e_ptr,
                         tl.load(ddim_ptr + 2 * k), tl.load(ddim_ptr + 2 * k + 1),
                         wx_ptr, wh_ptr, bh_ptr, wo_ptr, bo_ptr, d, H, n_hidden,
                         BM, BN, BK, LOWP, PREC)
        m_src = m_buf + (step % 2) * (BM * d)
        m_dst = m_buf + ((step + 1) % 2) * (BM * d)
        # SiLU(p) into h_buf[0] (free once x0_hat is written), the gate into g_buf, then m's update
        blk.pfin_gate_rows(m_src, d, x0_buf, d, BM, e_ptr, h_buf, h_buf, g_buf,
                           wpm_ptr, wpu_ptr, bp_ptr, wgm_ptr, wgu_ptr, bg_ptr, d, H,
                           False, BM, BN, BK, LOWP, PREC)
        blk.pfin_update_rows(m_src, d, BM, h_buf, g_buf, wpd_ptr, bpd_ptr, m_dst, d, BM, d, H,
                             BM, BN, BK, LOWP, PREC)
    m_fin = m_buf + (K % 2) * (BM * d)
    for n0 in range(0, d, BN):
        blk.store_tile(m_out_ptr + row0 * d, d, rows, n0, d, blk.load_tile(m_fin, d, BM, n0, d, BM, BN), BM, BN)
    blk.linear_rows(m_fin, d, BM, head_w_ptr, head_b_ptr, d, C, logits_ptr + row0 * C, C, rows,
                    BM, BN, BK, LOWP, PREC)


def translator_pfin(s, z, noise, w_x, w_c, b_c, w_hidden, b_hidden, w_out, b_out,
                    w_pm, w_pu, b_p, w_pd, b_pd, w_gm, w_gu, b_g, head_w, head_b,
                    e_table, ddim, start_c0, start_c1):
    """Translator + PFIN loop + head in one launch.

    Shapes: ``s [B, d]`` (sets the dtype: fp32/fp16/bf16), ``z [B, d]`` (any supported float
    dtype), ``noise [B, d]`` or ``None`` (= zeros); Translator ``w_x/w_c [H, d]``, ``b_c [H]``,
    ``w_hidden [L-1, H, H]``, ``b_hidden [L-1, H]``, ``w_out [d, H]``, ``b_out [d]``; PFIN
    ``w_pm/w_pu [H, d]``, ``b_p [H]``, ``w_pd [d, H]``, ``b_pd [d]``, ``w_gm/w_gu [d, d]``,
    ``b_g [d]``; head ``head_w [C, d]``, ``head_b [C]``; ``e_table [K, H]`` and ``ddim [K, 2]`` fp32.
    Returns ``(logits [B, C], m [B, d])`` in ``s``'s dtype.
    """
    check_matrix("s", s, None, None, batch_rows=True)
    B, d = s.shape
    dtype, device = s.dtype, s.device
    check_matrix("z", z, B, d, None, device, batch_rows=True)
    if noise is not None:
        check_matrix("noise", noise, B, d, None, device, batch_rows=True)
    check_matrix("w_x", w_x, None, d, dtype, device)
    H = w_x.shape[0]
    for name, t, r, c in (("w_c", w_c, H, d), ("w_out", w_out, d, H), ("w_pm", w_pm, H, d),
                          ("w_pu", w_pu, H, d), ("w_pd", w_pd, d, H), ("w_gm", w_gm, d, d),
                          ("w_gu", w_gu, d, d)):
        check_matrix(name, t, r, c, dtype, device)
    for name, t, n in (("b_c", b_c, H), ("b_out", b_out, d), ("b_p", b_p, H), ("b_pd", b_pd, d),
                       ("b_g", b_g, d)):
        check_vector(name, t, n, dtype, device)
    check_matrix("head_w", head_w, None, d, dtype, device)
    C = head_w.shape[0]
    check_vector("head_b", head_b, C, dtype, device)
    n_hidden = check_hidden(w_hidden, b_hidden, H, dtype, device)
    K = check_tables(e_table, ddim, H, device)
    cfg = pick_blocks(B, d, H, None, dtype)
    lowp, prec = dot_mode(dtype, device)
    grid = triton.cdiv(B, cfg.BM)
    logits = torch.empty(B, C, device=device, dtype=dtype)
    m = torch.empty(B, d, device=device, dtype=dtype)
    scratch = torch.empty(grid * cfg.BM * (5 * d + 3 * H), device=device, dtype=torch.float32)
    wh = w_hidden if n_hidden else w_out  # any valid pointer when there is no residual layer
    bh = b_hidden if n_hidden else b_out
    launch(translator_pfin_kernel, (grid,),
           s, z, s if noise is None else noise, logits, m, scratch,
           w_x, w_c, b_c, wh, bh, w_out, b_out,
           w_pm, w_pu, b_p, w_pd, b_pd, w_gm, w_gu, b_g, head_w, head_b,
           e_table, ddim, float(start_c0), float(start_c1),
           B, d, H, C, n_hidden, K, 0,
           HAS_NOISE=noise is not None,
           BM=cfg.BM, BN=cfg.BN, BK=cfg.BK, LOWP=lowp, PREC=prec,
           num_warps=cfg.num_warps, num_stages=cfg.num_stages, maxnreg=cfg.maxnreg)
    return logits, m
