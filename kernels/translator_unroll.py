"""Fused op 6: the stage-2 training unroll (K2-step Translator DDIM loop + PFIN), forward and backward.

``(x_start [B, d], m_start [B, d], cond [B, H], e_table [K, H], ddim [K, 2]) -> m [B, d]``, the loop
of docs/math.md's "Stage 2" (``reference.translator_pfin_sample`` from an explicit start state): per step
k = K..1 the denoiser gives ``x0_hat`` from ``x`` (``cond = s W_c + b_a`` is computed once, outside),
``p = m W_pm + x0_hat W_pu + e_k + b_p``, ``g = sigmoid(m W_gm + x0_hat W_gu + b_g)``,
``m <- m + g (SiLU(p) W_pd + b_pd)``, ``x <- a_k x + b_k x0_hat``. Only ``m`` leaves the loop
(the loss reads the final ``m``; the final ``x`` is never used).

Forward (``translator_unroll_fwd_kernel``, ONE launch, a program per ``BM`` rows) saves only the
per-step inputs ``xs [K, B, d]`` and ``ms [K + 1, B, d]`` (fp32, the kernel's own loop state, so a
recompute from them is bitwise the forward's step): O(K B d) instead of eager autograd's
O(K B (L + 3) H).

Backward walks the loop in reverse, one step at a time (``translator_unroll_backward``):

* ``translator_unroll_bwd_step_kernel`` (a program per ``BM`` rows): recomputes step k's forward from
  ``x_k`` and ``m_k`` (saving ``a``, the residual pre-activations ``z``, ``p`` and ``[m_k | x0_hat]``
  for the weight gradients), then, with the running fp32 gradients ``gm = dL/dm_{k-1}`` and
  ``gx = dL/dx_{k-1}``::

      g_delta = gm * g                      g_q = gm * delta * g (1 - g)
      g_p = (g_delta W_pd) * SiLU'(p)       gm <- gm + g_p W_pm + g_q W_gm
      gx0 = g_p W_pu + g_q W_gu + b_k gx    (denoiser backward from gx0: ga, gz)
      gx <- ga W_x + a_k gx                 gcond += ga

* five deterministic weight-gradient launches (:func:`_denoiser.launch_wgrad`, four when
  L = 1) add step k's ``G^T X`` to fp32 accumulators (``W_x``; every residual ``W_l``; ``W_o``;
  ``W_pd``; ``[W_pm W_pu; W_gm W_gu]`` as one ``[H + d, 2d]`` product of ``[g_p | g_q]`` and
  ``[m_k | x0_hat]``) and store the step's column sums (bias and time-embedding gradients, summed
  over steps by ``torch.sum``: a fixed order).

The backward's workspace, B ((2L + 5) H + 9 d) values (step buffers, fp32 scratch and running
gradients), is reused across steps. Math in fp32 whatever the input dtype; step buffers are in the
input dtype (fp16/bf16 feed the tensor cores), accumulators fp32.
Launches: forward 1, backward K (1 + 5) (K (1 + 4) when L = 1).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _blocks as blk
from ._heuristics import check_hidden, check_matrix, check_vector, dot_mode, pick_blocks
from ._launch import launch
from ._denoiser import denoiser_rows_backward, denoiser_rows_forward, launch_wgrad


@triton.jit
def translator_unroll_fwd_kernel(
        x_start_ptr, m_start_ptr, cond_ptr, e_tab_ptr, ddim_ptr,
        wx_ptr, wh_ptr, bh_ptr, wo_ptr, bo_ptr,
        wpm_ptr, wpu_ptr, bp_ptr, wpd_ptr, bpd_ptr, wgm_ptr, wgu_ptr, bg_ptr,
        xs_ptr, ms_ptr, m_out_ptr, scratch_ptr,
        B, d, H, n_hidden, K, zero,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
        LOWP: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    row0 = pid * BM
    rows = B - row0
    slab = scratch_ptr + pid * (BM * (2 * d + 2 * H))
    x0_buf = slab                # [BM, d] x0_hat of the current step
    g_buf = slab + BM * d        # [BM, d] PFIN gate
    h_buf = slab + 2 * BM * d    # 2 x [BM, H]; h_buf[0] holds SiLU(p) in the PFIN phase
    cond_rows = cond_ptr + row0 * H
    for n0 in range(0, d, BN):
        blk.store_tile(xs_ptr + row0 * d, d, rows, n0, d,
                       blk.load_tile(x_start_ptr + row0 * d, d, rows, n0, d, BM, BN), BM, BN)
        blk.store_tile(ms_ptr + row0 * d, d, rows, n0, d,
                       blk.load_tile(m_start_ptr + row0 * d, d, rows, n0, d, BM, BN), BM, BN)
    tl.debug_barrier()
    for step in range(K):
        k = K - 1 - step  # table row of step K - step
        j = zero * step  # opaque 0: keeps address math inside the loop (see _blocks.py)
        x0_buf = x0_buf + j
        g_buf = g_buf + j
        h_buf = h_buf + j
        x_rows = xs_ptr + (step * B + row0) * d
        m_rows = ms_ptr + (step * B + row0) * d
        e_ptr = e_tab_ptr + k * H
        denoiser_rows_forward(x_rows, d, e_ptr, 0, cond_rows, rows, wx_ptr, wh_ptr, bh_ptr, wo_ptr, bo_ptr,
                              x0_buf, d, BM, x0_buf, x0_buf, h_buf, d, H, n_hidden,
                              False, BM, BN, BK, LOWP, PREC)
        tl.debug_barrier()
        if step < K - 1:  # x_{k-1} = a_k x_k + b_k x0_hat (the last one is never read)
            a_k = tl.load(ddim_ptr + 2 * k)
            b_k = tl.load(ddim_ptr + 2 * k + 1)
            for n0 in range(0, d, BN):
                x = a_k * blk.load_tile(x_rows, d, rows, n0, d, BM, BN) \
                    + b_k * blk.load_tile(x0_buf, d, BM, n0, d, BM, BN)
                blk.store_tile(x_rows + B * d, d, rows, n0, d, x, BM, BN)
        blk.pfin_gate_rows(m_rows, d, x0_buf, d, rows, e_ptr, h_buf, h_buf, g_buf,
                           wpm_ptr, wpu_ptr, bp_ptr, wgm_ptr, wgu_ptr, bg_ptr, d, H,
                           False, BM, BN, BK, LOWP, PREC)
        blk.pfin_update_rows(m_rows, d, rows, h_buf, g_buf, wpd_ptr, bpd_ptr, m_rows + B * d, d, rows, d, H,
                             BM, BN, BK, LOWP, PREC)
    m_fin = ms_ptr + (K * B + row0) * d
    for n0 in range(0, d, BN):
        blk.store_tile(m_out_ptr + row0 * d, d, rows, n0, d, blk.load_tile(m_fin, d, rows, n0, d, BM, BN), BM, BN)


@triton.jit
def translator_unroll_bwd_step_kernel(
        x_ptr, m_ptr, cond_ptr, e_ptr, coef_ptr,
        wx_ptr, wh_ptr, bh_ptr, wo_ptr, bo_ptr,
        wpm_ptr, wpu_ptr, bp_ptr, wpd_ptr, bpd_ptr, wgm_ptr, wgu_ptr, bg_ptr,
        a_ptr, z_ptr, p_ptr, mx_ptr, ga_ptr, gz_ptr, gx0_ptr, gdel_ptr, gpq_ptr,
        gm_ptr, gx_ptr, gcond_ptr, scratch_ptr,
        B, d, H, n_hidden,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
        LOWP: tl.constexpr, PREC: tl.constexpr):
    """One reverse step for ``BM`` rows: ``x_ptr``/``m_ptr`` are the step's saved inputs, ``e_ptr``
    its time-embedding row ``[H]`` and ``coef_ptr`` its DDIM row ``(a_k, b_k)``; ``gm``/``gx``
    (fp32) are updated in place."""
    pid = tl.program_id(0).to(tl.int64)
    row0 = pid * BM
    rows = B - row0
    slab = scratch_ptr + pid * (BM * (2 * d + 2 * H))
    x0_buf = slab                # [BM, d] x0_hat (fp32, as in the forward)
    g_buf = slab + BM * d        # [BM, d] gate
    h_buf = slab + 2 * BM * d    # 2 x [BM, H]: h, then SiLU(p), then dL/dh
    zs = n_hidden * H
    ps = H + d                   # row stride of [g_p | g_q]
    x_rows = x_ptr + row0 * d
    m_rows = m_ptr + row0 * d
    a_rows = a_ptr + row0 * H
    z_rows = z_ptr + row0 * zs
    p_rows = p_ptr + row0 * H
    mx_rows = mx_ptr + row0 * (2 * d)
    ga_rows = ga_ptr + row0 * H
    gdel_rows = gdel_ptr + row0 * d
    gpq_rows = gpq_ptr + row0 * ps
    gx0_rows = gx0_ptr + row0 * d
    gm_rows = gm_ptr + row0 * d
    gx_rows = gx_ptr + row0 * d
    a_k = tl.load(coef_ptr)
    b_k = tl.load(coef_ptr + 1)

    # recompute the step (saving a, z), then X of the PFIN input weights: [m_k | x0_hat]
    denoiser_rows_forward(x_rows, d, e_ptr, 0, cond_ptr + row0 * H, rows, wx_ptr, wh_ptr, bh_ptr, wo_ptr, bo_ptr,
                          x0_buf, d, BM, a_rows, z_rows, h_buf, d, H, n_hidden, True, BM, BN, BK, LOWP, PREC)
    tl.debug_barrier()
    for n0 in range(0, d, BN):
        blk.store_tile(mx_rows, 2 * d, rows, n0, d, blk.load_tile(m_rows, d, rows, n0, d, BM, BN), BM, BN)
        blk.store_tile(mx_rows + d, 2 * d, rows, n0, d, blk.load_tile(x0_buf, d, BM, n0, d, BM, BN), BM, BN)
    blk.pfin_gate_rows(m_rows, d, x0_buf, d, rows, e_ptr, h_buf, p_rows, g_buf,
                       wpm_ptr, wpu_ptr, bp_ptr, wgm_ptr, wgu_ptr, bg_ptr, d, H,
                       True, BM, BN, BK, LOWP, PREC)
    # g_delta = gm g ; g_q = gm delta g (1 - g)  (delta recomputed from SiLU(p) in h_buf[0])
    for n0 in range(0, d, BN):
        delta = blk.matmul_tile(tl.zeros((BM, BN), tl.float32), h_buf, H, BM, wpd_ptr, n0, d, H,
                                BM, BN, BK, LOWP, PREC)
        delta += blk.load_vec(bpd_ptr, n0, d, BN)[None, :]
        gm = blk.load_tile(gm_rows, d, rows, n0, d, BM, BN)
        g = blk.load_tile(g_buf, d, BM, n0, d, BM, BN)
        blk.store_tile(gdel_rows, d, rows, n0, d, gm * g, BM, BN)
        blk.store_tile(gpq_rows + H, ps, rows, n0, d, gm * delta * g * (1.0 - g), BM, BN)
    tl.debug_barrier()
    # g_p = (g_delta W_pd) SiLU'(p)  (W_pd [d, H])
    for n0 in range(0, H, BN):
        gp = blk.matmul_tile(tl.zeros((BM, BN), tl.float32), gdel_rows, d, rows, wpd_ptr, n0, H, d,
                             BM, BN, BK, LOWP, PREC, W_KN=True)
        gp *= blk.dsilu(blk.load_tile(p_rows, H, rows, n0, H, BM, BN))
        blk.store_tile(gpq_rows, ps, rows, n0, H, gp, BM, BN)
    tl.debug_barrier()
    # gm <- gm + g_p W_pm + g_q W_gm ; gx0 = g_p W_pu + g_q W_gu + b_k gx  (one accumulator at a time)
    for n0 in range(0, d, BN):
        acc = blk.load_tile(gm_rows, d, rows, n0, d, BM, BN)
        acc = blk.matmul_tile(acc, gpq_rows, ps, rows, wpm_ptr, n0, d, H, BM, BN, BK, LOWP, PREC, W_KN=True)
        acc = blk.matmul_tile(acc, gpq_rows + H, ps, rows, wgm_ptr, n0, d, d, BM, BN, BK, LOWP, PREC, W_KN=True)
        blk.store_tile(gm_rows, d, rows, n0, d, acc, BM, BN)
    for n0 in range(0, d, BN):
        acc = b_k * blk.load_tile(gx_rows, d, rows, n0, d, BM, BN)
        acc = blk.matmul_tile(acc, gpq_rows, ps, rows, wpu_ptr, n0, d, H, BM, BN, BK, LOWP, PREC, W_KN=True)
        acc = blk.matmul_tile(acc, gpq_rows + H, ps, rows, wgu_ptr, n0, d, d, BM, BN, BK, LOWP, PREC, W_KN=True)
        blk.store_tile(gx0_rows, d, rows, n0, d, acc, BM, BN)
    tl.debug_barrier()
    denoiser_rows_backward(gx0_rows, d, rows, a_rows, z_rows, wh_ptr, wo_ptr, h_buf, gz_ptr + row0 * zs, ga_rows,
                           ga_rows, gcond_ptr + row0 * H, d, H, n_hidden, False, True, BM, BN, BK, LOWP, PREC)
    # gx <- ga W_x + a_k gx  (W_x [H, d])
    for n0 in range(0, d, BN):
        acc = a_k * blk.load_tile(gx_rows, d, rows, n0, d, BM, BN)
        acc = blk.matmul_tile(acc, ga_rows, H, rows, wx_ptr, n0, d, H, BM, BN, BK, LOWP, PREC, W_KN=True)
        blk.store_tile(gx_rows, d, rows, n0, d, acc, BM, BN)


# --------------------------------------------------------------------------- launchers

_PFIN_SHAPES = (("w_pm", "H", "d"), ("w_pu", "H", "d"), ("b_p", "H", None), ("w_pd", "d", "H"), ("b_pd", "d", None),
                ("w_gm", "d", "d"), ("w_gu", "d", "d"), ("b_g", "d", None))


def check_denoiser(x, cond, weights, x_name):
    """``x [B, d]``, ``cond [B, H]`` and the five denoiser weights ``(w_x, w_hidden, b_hidden, w_out,
    b_out)`` (before any launch); returns ``(B, d, H, n_hidden)``."""
    check_matrix(x_name, x, None, None, batch_rows=True)
    B, d = x.shape
    device = x.device
    w_x, w_hidden, b_hidden, w_out, b_out = weights[:5]
    check_matrix("w_x", w_x, None, d, None, device)
    H, dtype = w_x.shape[0], w_x.dtype
    check_matrix("cond", cond, B, H, dtype, device, batch_rows=True)
    n_hidden = check_hidden(w_hidden, b_hidden, H, dtype, device)
    check_matrix("w_out", w_out, d, H, dtype, device)
    check_vector("b_out", b_out, d, dtype, device)
    return B, d, H, n_hidden


def _check(x, cond, e_table, ddim, weights, x_name):
    """Shapes/dtypes/devices of the shared arguments (before any launch); returns ``(B, d, H, n_hidden, K)``."""
    B, d, H, n_hidden = check_denoiser(x, cond, weights, x_name)
    device, dtype = x.device, weights[0].dtype
    sizes = {"d": d, "H": H}
    for (name, rows, cols), t in zip(_PFIN_SHAPES, weights[5:]):
        if cols is None:
            check_vector(name, t, sizes[rows], dtype, device)
        else:
            check_matrix(name, t, sizes[rows], sizes[cols], dtype, device)
    check_matrix("e_table", e_table, None, H, dtype, device)
    K = e_table.shape[0]
    check_matrix("ddim", ddim, K, 2, torch.float32, device)
    return B, d, H, n_hidden, K


def _pointers(weights, n_hidden):
    """The weight list with a valid stand-in for the empty residual stack (L = 1)."""
    w = list(weights)
    if not n_hidden:
        w[1], w[2] = w[3], w[4]
    return w


def translator_unroll_forward(x_start, m_start, cond, e_table, ddim, w_x, w_hidden, b_hidden, w_out, b_out,
                              w_pm, w_pu, b_p, w_pd, b_pd, w_gm, w_gu, b_g):
    """The unrolled loop in one launch.

    ``x_start [B, d]``, ``m_start [B, d]`` (fp32/fp16/bf16), ``cond [B, H]`` (= ``s W_c + b_a``),
    ``e_table [K, H]`` (row k-1 = e(tau_k)), all weights and ``cond``/``e_table`` in one dtype;
    ``ddim [K, 2]`` fp32; Translator ``w_x [H, d]``, ``w_hidden [L-1, H, H]``, ``b_hidden [L-1, H]``,
    ``w_out [d, H]``, ``b_out [d]``; PFIN ``w_pm/w_pu [H, d]``, ``b_p [H]``, ``w_pd [d, H]``,
    ``b_pd [d]``, ``w_gm/w_gu [d, d]``, ``b_g [d]``.
    Returns ``(m [B, d] in the weights' dtype, xs [K, B, d] fp32, ms [K + 1, B, d] fp32)``.
    """
    weights = (w_x, w_hidden, b_hidden, w_out, b_out, w_pm, w_pu, b_p, w_pd, b_pd, w_gm, w_gu, b_g)
    B, d, H, n_hidden, K = _check(x_start, cond, e_table, ddim, weights, "x_start")
    check_matrix("m_start", m_start, B, d, None, x_start.device, batch_rows=True)
    dtype, device = w_x.dtype, x_start.device
    cfg = pick_blocks(B, d, H, None, dtype)
    lowp, prec = dot_mode(dtype, device)
    grid = triton.cdiv(B, cfg.BM)
    f32 = dict(device=device, dtype=torch.float32)
    xs = torch.empty(K, B, d, **f32)
    ms = torch.empty(K + 1, B, d, **f32)
    m = torch.empty(B, d, device=device, dtype=dtype)
    scratch = torch.empty(grid * cfg.BM * (2 * d + 2 * H), **f32)
    launch(translator_unroll_fwd_kernel, (grid,), x_start, m_start, cond, e_table, ddim,
           *_pointers(weights, n_hidden), xs, ms, m, scratch, B, d, H, n_hidden, K, 0,
           BM=cfg.BM, BN=cfg.BN, BK=cfg.BK, LOWP=lowp, PREC=prec,
           num_warps=cfg.num_warps, num_stages=cfg.num_stages, maxnreg=cfg.maxnreg)
    return m, xs, ms


def translator_unroll_backward(grad_m, xs, ms, cond, e_table, ddim, w_x, w_hidden, b_hidden, w_out, b_out,
                               w_pm, w_pu, b_p, w_pd, b_pd, w_gm, w_gu, b_g):
    """Every gradient of :func:`translator_unroll_forward` from ``grad_m = dL/dm [B, d]`` and the saved
    ``xs [K, B, d]``, ``ms [K + 1, B, d]`` (fp32).

    Returns ``(grad_x_start, grad_m_start, grad_cond, grad_e_table, grad_w_x, grad_w_hidden, grad_b_hidden,
    grad_w_out, grad_b_out, grad_w_pm, grad_w_pu, grad_b_p, grad_w_pd, grad_b_pd, grad_w_gm, grad_w_gu,
    grad_b_g)`` in the weights' dtype, accumulated in fp32 in a fixed order (bitwise reproducible).
    Launches: K x (1 + 5), K x (1 + 4) when L = 1.
    """
    weights = (w_x, w_hidden, b_hidden, w_out, b_out, w_pm, w_pu, b_p, w_pd, b_pd, w_gm, w_gu, b_g)
    if not isinstance(xs, torch.Tensor) or xs.dim() != 3:
        raise ValueError(f"xs must be a [K, B, d] float32 tensor, got {getattr(xs, 'shape', type(xs).__name__)}")
    B, d, H, n_hidden, K = _check(xs[0], cond, e_table, ddim, weights, "xs[k]")
    dtype, device = w_x.dtype, xs.device
    f32 = dict(device=device, dtype=torch.float32)
    for name, t, planes in (("xs", xs, K), ("ms", ms, K + 1)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (planes, B, d) or t.dtype != torch.float32 \
                or t.device != device or not t.is_contiguous():
            got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a contiguous float32 [{planes}, {B}, {d}] tensor on {device}, got {got}")
    check_matrix("grad_m", grad_m, B, d, None, device, batch_rows=True)
    cfg = pick_blocks(B, d, H, None, dtype)
    lowp, prec = dot_mode(dtype, device)
    grid = triton.cdiv(B, cfg.BM)

    buf = lambda *shape: torch.empty(*shape, device=device, dtype=dtype)  # noqa: E731  (per-step workspace)
    a, p, ga = buf(B, H), buf(B, H), buf(B, H)
    z, gz = (buf(B, n_hidden, H), buf(B, n_hidden, H)) if n_hidden else (a, ga)  # any valid pointer
    mx, gx0, gdel, gpq = buf(B, 2 * d), buf(B, d), buf(B, d), buf(B, H + d)
    scratch = torch.empty(grid * cfg.BM * (2 * d + 2 * H), **f32)
    gm = torch.empty(B, d, **f32).copy_(grad_m)
    gx = torch.zeros(B, d, **f32)
    gcond = torch.zeros(B, H, **f32)
    dw_x, dw_h, dw_o = torch.empty(H, d, **f32), torch.empty(max(n_hidden, 1), H, H, **f32), torch.empty(d, H, **f32)
    dw_pd, dw_in = torch.empty(d, H, **f32), torch.empty(H + d, 2 * d, **f32)
    ga_sum, gz_sum, gx0_sum = torch.empty(K, H, **f32), torch.empty(K, n_hidden, H, **f32), torch.empty(K, d, **f32)
    gdel_sum, gpq_sum = torch.empty(K, d, **f32), torch.empty(K, H + d, **f32)
    ptrs = _pointers(weights, n_hidden)
    zs = max(n_hidden, 1) * H
    for i, step in enumerate(reversed(range(K))):
        k = K - 1 - step
        launch(translator_unroll_bwd_step_kernel, (grid,), xs[step], ms[step], cond, e_table[k], ddim[k], *ptrs,
               a, z, p, mx, ga, gz, gx0, gdel, gpq, gm, gx, gcond, scratch, B, d, H, n_hidden,
               BM=cfg.BM, BN=cfg.BN, BK=cfg.BK, LOWP=lowp, PREC=prec,
               num_warps=cfg.num_warps, num_stages=cfg.num_stages, maxnreg=cfg.maxnreg)
        common = dict(z=z, zs=zs, B=B, lowp=lowp, prec=prec, acc=i > 0)
        launch_wgrad(ga, H, xs[step], d, 0, dw_x, ga_sum[k], H, d, 1, from_h=False, **common)
        if n_hidden:
            launch_wgrad(gz, n_hidden * H, a, H, 0, dw_h, gz_sum[k], H, H, n_hidden, from_h=True, **common)
        launch_wgrad(gx0, d, a, H, n_hidden, dw_o, gx0_sum[k], d, H, 1, from_h=True, **common)
        launch_wgrad(gdel, d, p, H, 0, dw_pd, gdel_sum[k], d, H, 1, from_h=True, **common)  # X = SiLU(p)
        launch_wgrad(gpq, H + d, mx, 2 * d, 0, dw_in, gpq_sum[k], H + d, 2 * d, 1, from_h=False, **common)

    del a, p, ga, z, gz, mx, gx0, gdel, scratch  # the step workspace, before the outputs are made
    out = lambda t: t.to(dtype).contiguous()  # noqa: E731
    grad_w_hidden = out(dw_h) if n_hidden else torch.empty_like(w_hidden)
    return (out(gx), out(gm), out(gcond), out(ga_sum + gpq_sum[:, :H]),
            out(dw_x), grad_w_hidden, out(gz_sum.sum(0)), out(dw_o), out(gx0_sum.sum(0)),
            out(dw_in[:H, :d]), out(dw_in[:H, d:]), out(gpq_sum[:, :H].sum(0)), out(dw_pd), out(gdel_sum.sum(0)),
            out(dw_in[H:, :d]), out(dw_in[H:, d:]), out(gpq_sum[:, H:].sum(0)))
