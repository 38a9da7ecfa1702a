"""Device helpers shared by the fused sampling kernels (``@triton.jit`` functions, no launches).

A program owns ``BM`` rows of the batch. Activations of those rows live in a per-program fp32
scratch slab in global memory (small enough to stay in L2 in the latency regime); every phase
below reads whole rows of one scratch buffer as the K operand of a tiled matmul and writes
``BN``-wide column tiles of another, so callers put ``tl.debug_barrier()`` between phases.

Conventions: weights are ``nn.Linear`` layout ``[N, K]`` row-major contiguous; every helper
works in fp32. ``LOWP`` (constexpr) feeds fp16/bf16 operands to ``tl.dot`` (GPU, low-precision
weights); otherwise both operands are cast to fp32 and ``PREC`` ("ieee" or "tf32") picks the
fp32 dot precision. The interpreter always runs with ``LOWP=False`` (its fp16/bf16 dots are
unreliable).

Register pressure: the kernels add an opaque zero (``zero * step``, ``zero`` a runtime 0) to the
scratch pointers at the top of the K-step loop. Without it LLVM hoists every phase's
loop-invariant address tensors out of the step loop, and they stay live across all phases:
tens of spills at ``BM = 64`` (compile report) become zero.
"""
import triton
import triton.language as tl


@triton.jit
def silu(x):
    return x * tl.sigmoid(x)


@triton.jit
def dsilu(z):
    """``d SiLU(z) / dz = s (1 + z (1 - s))``, ``s = sigmoid(z)`` (torch's formula)."""
    s = tl.sigmoid(z)
    return s * (1.0 + z * (1.0 - s))


@triton.jit
def load_tile(ptr, stride, rows, n0, N, BM: tl.constexpr, BN: tl.constexpr):
    """fp32 ``[BM, BN]`` tile ``ptr[r, n0 + j]`` (row stride ``stride``), zero outside ``rows x N``."""
    offs_m = tl.arange(0, BM)
    offs_n = n0 + tl.arange(0, BN)
    mask = (offs_m[:, None] < rows) & (offs_n[None, :] < N)
    return tl.load(ptr + offs_m[:, None] * stride + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def store_tile(ptr, stride, rows, n0, N, val, BM: tl.constexpr, BN: tl.constexpr):
    """Store ``val [BM, BN]`` at ``ptr[r, n0 + j]`` for the real ``rows x N`` part, cast to ``ptr``'s type."""
    offs_m = tl.arange(0, BM)
    offs_n = n0 + tl.arange(0, BN)
    mask = (offs_m[:, None] < rows) & (offs_n[None, :] < N)
    tl.store(ptr + offs_m[:, None] * stride + offs_n[None, :], val.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def load_vec(ptr, n0, N, BN: tl.constexpr):
    """fp32 ``[BN]`` slice ``ptr[n0 : n0 + BN]``, zero past ``N``."""
    offs = n0 + tl.arange(0, BN)
    return tl.load(ptr + offs, mask=offs < N, other=0.0).to(tl.float32)


@triton.jit
def matmul_tile(acc, x_ptr, x_stride, rows, w_ptr, n0, N, Kdim,
                BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                LOWP: tl.constexpr, PREC: tl.constexpr, W_KN: tl.constexpr = False):
    """``acc [BM, BN] += X[:rows, :Kdim] @ W[n0 : n0 + BN, :Kdim]^T`` with ``W [N, Kdim]`` contiguous
    (``nn.Linear``'s layout), or ``X @ W[:Kdim, n0 : n0 + BN]`` with ``W [Kdim, N]`` when ``W_KN``
    (the backward's ``G W``)."""
    return matmul_slice(acc, x_ptr, x_stride, rows, w_ptr, n0, N, Kdim, 0, Kdim, BM, BN, BK, LOWP, PREC, W_KN)


@triton.jit
def matmul_slice(acc, x_ptr, x_stride, rows, w_ptr, n0, N, Kdim, k_lo, k_hi,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                 LOWP: tl.constexpr, PREC: tl.constexpr, W_KN: tl.constexpr = False):
    """:func:`matmul_tile` over the reduction slice ``k_lo <= k < k_hi`` only (split-K; ``Kdim`` is
    still ``W``'s full reduction width, its row stride)."""
    offs_m = tl.arange(0, BM)
    offs_n = n0 + tl.arange(0, BN)
    for k0 in range(k_lo, k_hi, BK):
        offs_k = k0 + tl.arange(0, BK)
        x = tl.load(x_ptr + offs_m[:, None] * x_stride + offs_k[None, :],
                    mask=(offs_m[:, None] < rows) & (offs_k[None, :] < k_hi), other=0.0)
        if W_KN:
            w = tl.load(w_ptr + offs_k[:, None] * N + offs_n[None, :],
                        mask=(offs_k[:, None] < k_hi) & (offs_n[None, :] < N), other=0.0)
        else:
            w = tl.load(w_ptr + offs_n[None, :] * Kdim + offs_k[:, None],
                        mask=(offs_n[None, :] < N) & (offs_k[:, None] < k_hi), other=0.0)
        if LOWP:
            acc = tl.dot(x.to(w.dtype), w, acc)
        else:
            acc = tl.dot(x.to(tl.float32), w.to(tl.float32), acc, input_precision=PREC)
    return acc


@triton.jit
def matmul_slice_desc(acc, x_ptr, x_stride, r0, B, w_ptr, n0, N, Kdim, k_lo, k_hi,
                      BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                      LOWP: tl.constexpr, PREC: tl.constexpr):
    """:func:`matmul_slice` of the row block at ``r0`` of ``X [B, Kdim]`` (row stride ``x_stride``)
    and ``W [N, Kdim]``, both operands loaded through tensor descriptors (TMA on Hopper) made here
    over the whole matrices, so a block past ``B``, ``N`` or ``Kdim`` reads zeros, as the masks do
    (a K slice's blocks end at ``k_hi``: every slice but the last is a whole number of ``BK``). The
    descriptors depend on the job, not on the tile. Bases and row strides must be 16-byte aligned
    (the launcher checks)."""
    xd = tl.make_tensor_descriptor(x_ptr, shape=[B, Kdim], strides=[x_stride, 1], block_shape=[BM, BK])
    wd = tl.make_tensor_descriptor(w_ptr, shape=[N, Kdim], strides=[Kdim, 1], block_shape=[BN, BK])
    row = r0.to(tl.int32)  # (a descriptor's coordinates are int32; the launcher's r0 is int64)
    for k0 in range(k_lo, k_hi, BK):
        x = xd.load([row, k0])
        w = wd.load([n0, k0])
        if LOWP:
            acc = tl.dot(x.to(w.dtype), w.T, acc)
        else:
            acc = tl.dot(x.to(tl.float32), w.to(tl.float32).T, acc, input_precision=PREC)
    return acc


@triton.jit
def linear_layernorm_rows(x_ptr, x_stride, rows, w_ptr, b_ptr, g_ptr, beta_ptr, eps, Din, d, y_ptr,
                          BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                          LOWP: tl.constexpr, PREC: tl.constexpr):
    """Scratch ``y [BM, d] = LayerNorm(X W^T + b)`` (biased variance, two passes, like torch)."""
    linear_rows(x_ptr, x_stride, rows, w_ptr, b_ptr, Din, d, y_ptr, d, BM, BM, BN, BK, LOWP, PREC)
    tl.debug_barrier()
    total = tl.zeros((BM,), tl.float32)
    for n0 in range(0, d, BN):
        total += tl.sum(load_tile(y_ptr, d, BM, n0, d, BM, BN), axis=1)
    mean = total / d
    sq = tl.zeros((BM,), tl.float32)
    for n0 in range(0, d, BN):
        cols = n0 + tl.arange(0, BN)
        diff = tl.where(cols[None, :] < d, load_tile(y_ptr, d, BM, n0, d, BM, BN) - mean[:, None], 0.0)
        sq += tl.sum(diff * diff, axis=1)
    rstd = 1.0 / tl.sqrt(sq / d + eps)
    for n0 in range(0, d, BN):
        y = load_tile(y_ptr, d, BM, n0, d, BM, BN)
        y = (y - mean[:, None]) * rstd[:, None] * load_vec(g_ptr, n0, d, BN)[None, :] \
            + load_vec(beta_ptr, n0, d, BN)[None, :]
        store_tile(y_ptr, d, BM, n0, d, y, BM, BN)
    tl.debug_barrier()


@triton.jit
def linear_rows(x_ptr, x_stride, rows, w_ptr, b_ptr, Din, N, y_ptr, y_stride, y_rows,
                BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                LOWP: tl.constexpr, PREC: tl.constexpr):
    """``Y[:y_rows, :N] = X W^T + b`` for one row block (``W [N, Din]``)."""
    for n0 in range(0, N, BN):
        acc = matmul_tile(tl.zeros((BM, BN), tl.float32), x_ptr, x_stride, rows, w_ptr, n0, N, Din,
                          BM, BN, BK, LOWP, PREC)
        store_tile(y_ptr, y_stride, y_rows, n0, N, acc + load_vec(b_ptr, n0, N, BN)[None, :], BM, BN)


@triton.jit
def denoise_step(x_ptr, x0_ptr, cond_ptr, h_ptr, e_ptr, a_k, b_k,
                 wx_ptr, wh_ptr, bh_ptr, wo_ptr, bo_ptr, d, H, n_hidden,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                 LOWP: tl.constexpr, PREC: tl.constexpr):
    """One DDIM step of the denoiser on the scratch state (all scratch buffers ``BM`` rows, fp32).

    ``x [BM, d]`` (updated in place to ``a_k x + b_k x0_hat``), ``x0 [BM, d]`` (written),
    ``cond [BM, H]`` = ``c W_c + b_a``, ``h`` two ``[BM, H]`` buffers, ``e [H]`` = e(tau_k),
    ``wh [n_hidden, H, H]`` / ``bh [n_hidden, H]`` the residual layers.
    """
    # a = x W_x + cond + e ; h = SiLU(a)
    for n0 in range(0, H, BN):
        acc = matmul_tile(tl.zeros((BM, BN), tl.float32), x_ptr, d, BM, wx_ptr, n0, H, d,
                          BM, BN, BK, LOWP, PREC)
        acc += load_tile(cond_ptr, H, BM, n0, H, BM, BN) + load_vec(e_ptr, n0, H, BN)[None, :]
        store_tile(h_ptr, H, BM, n0, H, silu(acc), BM, BN)
    tl.debug_barrier()
    # h = h + SiLU(h W_l + b_l), ping-ponging between the two h buffers
    for layer in range(n_hidden):
        src = h_ptr + (layer % 2) * (BM * H)
        dst = h_ptr + ((layer + 1) % 2) * (BM * H)
        for n0 in range(0, H, BN):
            acc = matmul_tile(tl.zeros((BM, BN), tl.float32), src, H, BM, wh_ptr + layer * H * H, n0, H, H,
                              BM, BN, BK, LOWP, PREC)
            acc += load_vec(bh_ptr + layer * H, n0, H, BN)[None, :]
            store_tile(dst, H, BM, n0, H, load_tile(src, H, BM, n0, H, BM, BN) + silu(acc), BM, BN)
        tl.debug_barrier()
    last = h_ptr + (n_hidden % 2) * (BM * H)
    # x0_hat = h W_o + b_o ; x <- a_k x + b_k x0_hat
    for n0 in range(0, d, BN):
        acc = matmul_tile(tl.zeros((BM, BN), tl.float32), last, H, BM, wo_ptr, n0, d, H,
                          BM, BN, BK, LOWP, PREC)
        x0 = acc + load_vec(bo_ptr, n0, d, BN)[None, :]
        store_tile(x0_ptr, d, BM, n0, d, x0, BM, BN)
        x = load_tile(x_ptr, d, BM, n0, d, BM, BN)
        store_tile(x_ptr, d, BM, n0, d, a_k * x + b_k * x0, BM, BN)
    tl.debug_barrier()


@triton.jit
def pfin_gate_rows(m_ptr, m_stride, x0_ptr, x0_stride, rows, e_ptr, sp_ptr, p_ptr, g_ptr,
                   wpm_ptr, wpu_ptr, bp_ptr, wgm_ptr, wgu_ptr, bg_ptr, d, H,
                   STORE_P: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                   LOWP: tl.constexpr, PREC: tl.constexpr):
    """PFIN's two input projections of one row block (rows of ``m`` and ``x0_hat``, ``e [H]``):
    scratch ``sp [BM, H] = SiLU(p)`` with ``p = m W_pm + x0 W_pu + b_p + e`` (``p`` itself also to
    ``p_ptr`` (row stride H, ``rows`` rows) when ``STORE_P``), then scratch
    ``g [BM, d] = sigmoid(m W_gm + x0 W_gu + b_g)``. Ends with a barrier."""
    for n0 in range(0, H, BN):
        acc = matmul_tile(tl.zeros((BM, BN), tl.float32), m_ptr, m_stride, rows, wpm_ptr, n0, H, d,
                          BM, BN, BK, LOWP, PREC)
        acc = matmul_tile(acc, x0_ptr, x0_stride, rows, wpu_ptr, n0, H, d, BM, BN, BK, LOWP, PREC)
        acc += load_vec(bp_ptr, n0, H, BN)[None, :] + load_vec(e_ptr, n0, H, BN)[None, :]
        if STORE_P:
            store_tile(p_ptr, H, rows, n0, H, acc, BM, BN)
        store_tile(sp_ptr, H, BM, n0, H, silu(acc), BM, BN)
    tl.debug_barrier()
    # own phase: one accumulator live at a time
    for n0 in range(0, d, BN):
        gate = matmul_tile(tl.zeros((BM, BN), tl.float32), m_ptr, m_stride, rows, wgm_ptr, n0, d, d,
                           BM, BN, BK, LOWP, PREC)
        gate = matmul_tile(gate, x0_ptr, x0_stride, rows, wgu_ptr, n0, d, d, BM, BN, BK, LOWP, PREC)
        gate = tl.sigmoid(gate + load_vec(bg_ptr, n0, d, BN)[None, :])
        store_tile(g_ptr, d, BM, n0, d, gate, BM, BN)
    tl.debug_barrier()


@triton.jit
def pfin_update_rows(m_ptr, m_stride, rows, sp_ptr, g_ptr, wpd_ptr, bpd_ptr, out_ptr, out_stride, out_rows, d, H,
                     BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                     LOWP: tl.constexpr, PREC: tl.constexpr):
    """PFIN's gated update ``out = m + g * (SiLU(p) W_pd + b_pd)`` from :func:`pfin_gate_rows`'
    scratch ``sp``/``g``; ``out`` may be another row block (``out_rows`` real rows). Ends with a
    barrier."""
    for n0 in range(0, d, BN):
        delta = matmul_tile(tl.zeros((BM, BN), tl.float32), sp_ptr, H, BM, wpd_ptr, n0, d, H,
                            BM, BN, BK, LOWP, PREC)
        delta += load_vec(bpd_ptr, n0, d, BN)[None, :]
        m = load_tile(m_ptr, m_stride, rows, n0, d, BM, BN) + load_tile(g_ptr, d, BM, n0, d, BM, BN) * delta
        store_tile(out_ptr, out_stride, out_rows, n0, d, m, BM, BN)
    tl.debug_barrier()


@triton.jit
def _half(acc, part: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    lo, hi = tl.split(tl.permute(tl.reshape(acc, (BM, 2, BN // 2)), (0, 2, 1)))
    if part == 0:
        out = lo
    else:
        out = hi
    return out


@triton.jit
def col_part(acc, part: tl.constexpr, PARTS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """Columns ``[part BN/PARTS, (part + 1) BN/PARTS)`` of ``acc [BM, BN]`` (``PARTS`` 1, 2 or 4). A
    split epilogue works on one part at a time, so the tiles it loads for a wide accumulator are
    never all live in registers together."""
    if PARTS == 1:
        out = acc
    elif PARTS == 2:
        out = _half(acc, part, BM, BN)
    else:
        out = _half(_half(acc, part // 2, BM, BN), part % 2, BM, BN // 2)
    return out
