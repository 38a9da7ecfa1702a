"""The stage-2 training unroll (K2-step Translator + PFIN loop) as phases: forward and backward.

The same operation as ``translator_unroll.py`` (``(x_start [B, d], m_start [B, d], cond [B, H],
e_table [K, H], ddim [K, 2]) -> m [B, d]`` and every gradient), tiled the way ``infer_phases.py``
tiles inference: a phase is one GEMM (or two or three riding together) over ALL rows, cut into
``BM x BN`` output tiles spread over all programs, with its element-wise work in the prologue and
epilogue. Activations live in ``[slots, B, width]`` buffers in the compute dtype; running
gradients (``gm = dL/dm``, ``gx = dL/dx``, ``gh = dL/dh``, ``gcond``) are fp32.

Forward, step ``i = 0 .. K-1`` (DDIM step k = K - i, table row K - 1 - i), the phases of
``infer_phases`` with every intermediate kept (``slot`` = i, or 0 under ``policy="recompute"``)::

    A      a = x_i W_x + cond + e_k ; h_0 = SiLU(a)                     n = H, K = d
    R_l    z_l = h_l W_l + b_l ; h_{l+1} = h_l + SiLU(z_l)              n = H, K = H
    O      x0 = h_{L-1} W_o + b_o ; x_{i+1} = a_k x_i + b_k x0          n = d, K = H
    PG     p = m_i W_pm + x0 W_pu + b_p + e_k, sp = SiLU(p)             n = H, K = 2d
           g = sigmoid(m_i W_gm + x0 W_gu + b_g)                        n = d, K = 2d
    D      delta = sp W_pd + b_pd ; m_{i+1} = m_i + g delta             n = d, K = H

PG of step i rides in A of step i + 1 and D of step i in R_0 (O when L = 1) of step i + 1, as in
inference: ``K (L + 1) + 2`` forward phases.

Backward, step ``i = K-1 .. 0``, from ``gm = dL/dm_{i+1}`` and ``gx = dL/dx_{i+1}``::

    BP     g_p = ((gm g) W_pd^T) SiLU'(p)          (gm g formed in the prologue)   n = H, K = d
           column block 0 also stores g_delta = gm g and g_q = gm delta g (1 - g)
    BM     gm <- gm + g_p W_pm^T + g_q W_gm^T ;  gx0 = g_p W_pu^T + g_q W_gu^T + b_k gx   2 x (n = d, K = H + d)
    BO     gh = gx0 W_o^T ; g_pre = gh SiLU'(pre)  (pre = z_{L-2}, or a when L = 1)  n = H, K = d
    BR_l   gh <- gh + gz_l W_l^T ; g_pre of the layer below                          n = H, K = H
           (when the layer below is the input layer: ga = gh SiLU'(a), gcond += ga; with
           GA_TOTAL, ga = [seed +] gh SiLU'(a) and gcond is not written)
    BX     gx <- ga W_x^T + a_k gx                  (rides in BP of step i - 1)      n = d, K = H

``K (L + 2) + 1`` backward phases, and weight-gradient phases W: each reduces the ``P`` steps
whose backward phases ran since the last one (:func:`grad_slots`: 2 under ``"save"``, 1 under
``"recompute"``). Weight gradients are GEMMs ``sum_steps G^T X`` tiled over (out, in) and split
over rows, each split writing its own fp32 partial (no atomics; each later W phase adds to them);
the host sums the partials in a fixed order (bitwise reproducible). Bias and time-embedding
gradients are the per-step, per-split column sums of ``G``, summed the same way. Policies:

* ``"save"``: the forward keeps every step's activations (``K`` slots).
* ``"recompute"``: the forward keeps only ``x_i`` and ``m_i``; before each backward step its
  forward phases run again into one slot (same kernels, same tiles: bitwise the forward's values).

The backward's activation gradients ``G`` live in ``P`` slots, step i in slot ``i % P`` (a W
phase consumes its steps' before a later step overwrites them). Phases per call: forward
``K (L + 1) + 2``; backward ``K (L + 2) + ceil(K / 2) + 1`` (save) or ``K ((L + 3) + (L + 3)) + 1``
(recompute). Every launch is one :func:`unroll_phase_kernel` (``KIND`` constexpr) over that
phase's tiles (:func:`pick_unroll_tiles`), with programmatic dependent launch on Hopper when the
caller asks (``pdl``). A phase reads whole rows only of buffers no tile of the same phase writes;
in-place updates (``gm``, ``gx``, ``gh``, ``gcond``) touch only the tile's own elements. Nothing
here has run on a GPU yet.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import _blocks as blk
from . import _graphs
from ._heuristics import check_matrix, clamp_block, dot_mode
from ._launch import launch, launch_group, recording
from .infer_phases import TARGET_TILES, PhaseTiles, _tile, pick_phase_tiles
from .translator_unroll import _check, _pointers

POLICIES = ("save", "recompute")
F_A, F_R, F_O, B_P, B_M, B_O, B_R, W_GRAD = range(8)
KIND_NAMES = ("A", "R", "O", "BP", "BM", "BO", "BR", "W")
# schedule row: kind, i (main job's step), layer, main, side, i_side (riding job's step), flags, 0
SCHED_COLS = 8
FLAG_X_NEXT = 1   # O: store x_{i+1}
FLAG_M_NEXT = 2   # D: store m_{i+1} (the recompute's D stores only delta)
FLAG_ACC = 4      # W: add to the weight-gradient partials


# ----------------------------------------------------------------------------- schedule (host)


def _forward_rows(steps, layers: int, ride: bool, store_next: bool) -> list[tuple]:
    """Rows of the forward phases of ``steps`` (in order); ``ride``: PG/D of a step ride in the
    next step's A/R_0 (or O) phases."""
    nh = layers - 1
    rows = []
    xn = FLAG_X_NEXT if store_next else 0
    mn = FLAG_M_NEXT if store_next else 0
    prev = None
    for pos, i in enumerate(steps):
        last = i == steps[-1] and pos == len(steps) - 1
        side = prev if ride else None
        rows.append((F_A, i, 0, 1, int(side is not None), side or 0, 0, 0))
        for layer in range(nh):
            d_here = side is not None and layer == 0
            rows.append((F_R, i, layer, 1, int(d_here), side or 0, mn if d_here else 0, 0))
        d_in_o = side is not None and nh == 0
        flags = (xn if store_next and not last else 0) | (mn if d_in_o else 0)
        rows.append((F_O, i, nh, 1, int(d_in_o), side or 0, flags, 0))
        if not ride:
            rows.append((F_A, 0, 0, 0, 1, i, 0, 0))
            rows.append((F_R, 0, 0, 0, 1, i, FLAG_M_NEXT if store_next else 0, 0))
        prev = i
    if ride:
        rows.append((F_A, 0, 0, 0, 1, prev, 0, 0))
        rows.append((F_R, 0, 0, 0, 1, prev, mn, 0))
    return rows


def _backward_rows(i: int, layers: int, bx_of: int | None) -> list[tuple]:
    nh = layers - 1
    rows = [(B_P, i, 0, 1, int(bx_of is not None), bx_of or 0, 0, 0), (B_M, i, 0, 1, 0, 0, 0, 0),
            (B_O, i, nh, 1, 0, 0, 0, 0)]
    rows += [(B_R, i, layer, 1, 0, 0, 0, 0) for layer in reversed(range(nh))]
    return rows


def grad_slots(K: int, policy: str) -> int:
    """Steps whose activation gradients the backward keeps at once (its G slots, step i in slot
    ``i % P``), and so the steps one weight-gradient phase reduces: 2 under ``"save"`` (the second
    slot halves the W phases and their fp32 partials' read-modify-writes, for ``B (3 H + 3 d)``
    more values of workspace), 1 under ``"recompute"`` (the step's forward rerun overwrites the one
    activation slot its W phase reads, so W follows each step)."""
    return min(2, K) if policy == "save" else 1


def build_schedule(layers: int, K: int, policy: str) -> tuple[list[tuple], list[tuple]]:
    """``(forward rows, backward rows)`` of one training unroll (see the module docstring)."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    P = grad_slots(K, policy)
    fwd = _forward_rows(list(range(K)), layers, ride=True, store_next=True)
    bwd = []
    for i in reversed(range(K)):
        if policy == "recompute":
            bwd += _forward_rows([i], layers, ride=False, store_next=False)
        bwd += _backward_rows(i, layers, i + 1 if i + 1 < K else None)
        if (K - i) % P == 0 or i == 0:  # W of steps i .. (the last W's first step) - 1
            n = (K - i) % P or P
            bwd.append((W_GRAD, i, 0, 1, n, 0, FLAG_ACC if i + n < K else 0, 0))
    bwd.append((B_P, 0, 0, 0, 1, 0, 0, 0))  # BX of step 0
    return fwd, bwd


def phase_counts(layers: int, K: int, policy: str) -> tuple[int, int]:
    """``(forward, backward)`` phases (= launches) of one training unroll."""
    fwd, bwd = build_schedule(layers, K, policy)
    return len(fwd), len(bwd)


# ----------------------------------------------------------------------------- tiles (host)


# fp16/bf16 activation tiles above the latency regime, widest first, each with the H-wide tiles a
# phase must have for it to be picked (pick_unroll_tiles)
UNROLL_TILES = ((PhaseTiles(128, 128, 64, 8, 3, epi_parts=2), TARGET_TILES // 2),
                (PhaseTiles(128, 64, 32, 8, 2), 9 * TARGET_TILES // 16),
                (PhaseTiles(64, 64, 32, 4, 2), TARGET_TILES // 2),
                (PhaseTiles(32, 64, 64, 4, 2), 3 * TARGET_TILES // 8))


def pick_unroll_tiles(batch: int, d: int, H: int, dtype: torch.dtype = torch.bfloat16) -> PhaseTiles:
    """Tile of the unroll's activation phases. fp16/bf16: the first of :data:`UNROLL_TILES` whose
    H-wide phases have enough tiles (thresholds at H = 1024): ``128 x 128 x 64`` (8 warps, 3 stages,
    the epilogue in 2 column parts) from 64 tiles (B >= 897), ``128 x 64 x 32`` (8 warps, 2 stages)
    from 72 (B >= 513), ``64 x 64 x 32`` (4 warps, 2 stages) from 64 (B >= 193), ``32 x 64 x 64``
    (4 warps, 2 stages) from 48 (B >= 65); smaller batches and fp32 take the inference picker's
    tiles (:func:`seda_fast.kernels.infer_phases.pick_phase_tiles`: 16-row tiles, narrow columns).
    With a 128-row tile the weight gradients take 128 x 256 (:func:`wgrad_tiles`).

    A training step's phases are few and large, so a wave or two of wide tiles beats more, narrower
    ones: the cost model (``seda_fast.tools.cost_training.unroll_phase_costs``, default model,
    K2 = 10, save, the weight-gradient tiles of :func:`wgrad_tiles`) gives, in ms, B = 128: 0.175
    (32 x 64) against 0.216 (16 x 64) and 0.203 (64 x 64); B = 256: 0.231 (64 x 64) / 0.263
    (32 x 64) / 0.297 (128 x 64); B = 640: 0.393 (128 x 64) / 0.458 (64 x 64) / 0.464
    (128 x 128); B = 1024: 0.537 (128 x 128) / 0.574 (128 x 64) / 0.696 (64 x 64); B = 4096:
    1.425 (128 x 128, with the wide tiles of :func:`pick_wide_tiles`) / 2.21 (128 x 64) / 2.75
    (64 x 64). The thresholds are fitted to that model: at every B from 16 to 8192 (step 16) the
    pick is within 4% of the best of 16 x 64, 32 x 64, 64 x 64, 128 x 64 and 128 x 128 (the worst,
    B = 176, is 32 x 64 where 64 x 64 would be 3.4% faster: the row blocks' padding decides there,
    which a tile count does not see).

    sm_90a compile report (default model; triton 3.7.1 and 3.6.0): 128 x 128 with the split
    epilogue 154-238 registers, no spills, 65-145 KiB of shared memory. Rejected: 128 x 128 with
    the whole-tile epilogue (6-10 spill stores in the residual layers' backward phase). Over the
    128 x 128 tile, the phases with a wave of wider tiles take 128 x 256 (:func:`pick_wide_tiles`).
    """
    if dtype != torch.float32:
        wide = max(d, H)
        for tiles, need in UNROLL_TILES:
            BN = clamp_block(tiles.BN, wide)
            if triton.cdiv(batch, tiles.BM) * triton.cdiv(H, BN) >= need:
                return PhaseTiles(tiles.BM, BN, clamp_block(tiles.BK, wide), tiles.num_warps, tiles.num_stages,
                                  epi_parts=tiles.epi_parts if BN == tiles.BN else 1)
    return pick_phase_tiles(batch, d, H, dtype)


WIDE_TILES = PhaseTiles(128, 256, 32, 8, 3, epi_parts=4)
WIDE_NEED = 3 * TARGET_TILES // 4  # a phase takes WIDE_TILES when it still has this many of them


def pick_wide_tiles(tiles: PhaseTiles, d: int, H: int) -> PhaseTiles | None:
    """The wider tile the activation phases of a call whose tile is ``tiles`` may take, phase by
    phase (:func:`row_tiles`): :data:`WIDE_TILES` (128 x 256 x 32, 8 warps, 3 stages, the epilogue
    in 4 column parts) over the 128 x 128 tile of :data:`UNROLL_TILES`; None for any other tile.

    The same work in tiles twice as wide reads 3/4 of the bytes per FLOP from L2 (a 128 x 128 tile
    does 64 FLOP per byte, below what the H200's compute needs from an L2 of about 10 TB/s), so
    it wins wherever the phase still has a wave of them. The cost model
    (``seda_fast.tools.cost_training``, default model, K2 = 10, save) gives the unroll 1.78 ms at
    B = 4096 with 128 x 128 everywhere and 1.43 ms with :func:`row_tiles` and the 128 x 256
    weight-gradient tile (:func:`wgrad_tiles`); with the 96-tile threshold the unroll is within 0.5%
    of taking the better of the two tiles phase by phase, at every B from 897 to 16384 (a phase of
    one d-wide job keeps 128 x 128 up to B = 6016). sm_90a compile report (triton 3.7.1 and 3.6.0):
    no spills in any phase kind, at most 255 registers and 129 KiB of shared memory; the residual
    layers' and the PFIN-input backward phases (BR, BM) add their running gradient in the split
    epilogue instead of starting the accumulator from it, which spilled 8 and 59 stores."""
    if (tiles.BM, tiles.BN) != (UNROLL_TILES[0][0].BM, UNROLL_TILES[0][0].BN):
        return None
    BN = clamp_block(WIDE_TILES.BN, max(d, H))
    return None if BN <= tiles.BN else WIDE_TILES


def row_tiles(row, B: int, d: int, H: int, nh: int, K: int, tiles: PhaseTiles,
              wide: PhaseTiles | None) -> PhaseTiles:
    """The tile of one activation phase (schedule ``row`` of a ``K``-step call): ``wide`` when given
    and the phase has at least :data:`WIDE_NEED` of its tiles, else the call's ``tiles``; the
    weight-gradient phase is tiled by :func:`wgrad_tiles` and launched as
    :func:`wgrad_launch_tiles` says. A forward job rerun by the ``"recompute"`` policy (alone, or
    PFIN's jobs without their host) counts as the forward's phase that ran it
    (:func:`_forward_host`): every job gets the same tile, and so the same K steps, in both runs,
    and the two policies stay bitwise equal."""
    if wide is None or row[0] == W_GRAD:
        return tiles
    host = _forward_host(row, nh, K)
    n = sum(triton.cdiv(M, wide.BM) * triton.cdiv(N, wide.BN) for _, M, N, _ in phase_jobs(host, B, d, H, nh))
    return wide if n >= WIDE_NEED else tiles


def _forward_host(row, nh: int, K: int) -> tuple:
    """The forward phase (:func:`_forward_rows` with riding) that runs the jobs of ``row``: a step's
    A (and R_0, or O without residual layers) carries the previous step's PG (D); the last step's
    PG and D run alone. Rows of other kinds host themselves."""
    kind, i, layer, main, side, i_side = row[:6]
    if kind not in (F_A, F_R, F_O):
        return row
    rides_here = kind == F_A or (kind == F_R and layer == 0) or (kind == F_O and nh == 0)
    if main:
        if rides_here and i > 0:
            return (kind, i, layer, 1, 1, i - 1, 0, 0)
        return (kind, i, layer, 1, 0, 0, 0, 0)
    if i_side + 1 < K:  # PG / D of step i_side ride in step i_side + 1's A / R_0 (or O)
        host = F_A if kind == F_A else F_R if nh else F_O
        return (host, i_side + 1, 0 if host != F_O else nh, 1, 1, i_side, 0, 0)
    return (kind, 0, 0, 0, 1, i_side, 0, 0)


def wgrad_tiles(dtype: torch.dtype, d: int, H: int, nh: int = 1, tiles: PhaseTiles | None = None,
                n_jobs: int = 6) -> tuple[int, int, int]:
    """``(WBN, WBK, WBB)``: weight-gradient output tile over (out, in) and rows per K step of a call
    whose activation tile is ``tiles``, over the first ``n_jobs`` jobs of :func:`wgrad_jobs`:
    fp16/bf16 ``128 x 256`` with a 128-row activation tile or when the phase still has a wave
    (:data:`TARGET_TILES`) of them, else ``128 x 128``, over 32 rows, launched with 8 warps
    (:func:`wgrad_launch_tiles`); fp32 ``32 x 32`` over 32 rows. Clamped to ``min(d, H)``.

    A tile reads ``B (WBN + WBK)`` operand values per step and read-modify-writes its fp32 partial,
    so the wider the tile, the fewer L2 bytes per FLOP (64 x 64 reads G and X twice as often as
    128 x 128), as long as the phase keeps a wave of tiles. The cost model
    (``seda_fast.tools.cost_training``, default model, K2 = 10, save: five W phases of two steps)
    gives the unroll's weight-gradient phases (six jobs: 128 tiles of 128 x 256), in us, B = 256:
    46 (128 x 256) against 55 (128 x 128) and 88 (64 x 64); B = 1024: 122 / 155; B = 4096: 449 /
    558. The diffusion term's one phase (three jobs: 64 tiles of 128 x 256) takes 128 x 128 below
    the 128-row activation tile: B = 256: 3.9 us against 7.8; B = 640 (128-row tile): 7.8 against
    6.3, and from B = 2048 128 x 256 is the faster (13.8 against 15.5). sm_90a: at most 255
    registers, no spills (the ops tests' compile check, triton 3.7.1 and 3.6.0)."""
    small = min(d, H)
    if dtype == torch.float32:
        return clamp_block(32, small), clamp_block(32, small), 32
    wide = (clamp_block(128, small), clamp_block(256, small))
    if (tiles is not None and tiles.BM == 128) or wgrad_out_tiles(d, H, nh, wide, n_jobs) >= TARGET_TILES:
        return (*wide, 32)
    return clamp_block(128, small), clamp_block(128, small), 32


def wgrad_launch_tiles(tiles: PhaseTiles, dtype: torch.dtype) -> PhaseTiles:
    """The launch meta of a weight-gradient phase in a call whose activation tile is ``tiles``:
    fp16/bf16 8 warps and 3 stages (two warpgroups over the 128 output rows of
    :func:`wgrad_tiles`; the activation tile's ``BM``, ``BN``, ``BK`` only size the kernel's
    scalar tile arithmetic there), fp32 ``tiles`` as they are."""
    if dtype == torch.float32 or (tiles.num_warps, tiles.num_stages) == (8, 3):
        return tiles
    return PhaseTiles(tiles.BM, tiles.BN, tiles.BK, 8, 3, maxnreg=tiles.maxnreg, epi_parts=tiles.epi_parts)


def wgrad_epilogue_parts(WBK: int) -> int:
    """Column parts of the weight-gradient tile's partial update: 4 at ``WBK = 256`` (the whole
    128 x 256 fp32 partial loaded beside the accumulator spilled 39 stores), else 1."""
    return 4 if WBK >= 256 else 1


def wgrad_jobs(d: int, H: int, nh: int) -> list[tuple]:
    """The weight-gradient jobs as ``(name, N, Kdim, layers)``: ``dW = G^T X``."""
    jobs = [("w_x", H, d, 1), ("w_hidden", H, H, nh), ("w_out", d, H, 1), ("w_pd", d, H, 1),
            ("w_in_m", H + d, d, 1), ("w_in_x", H + d, d, 1)]
    return jobs


def wgrad_out_tiles(d: int, H: int, nh: int, wt: tuple[int, int], n_jobs: int = 6) -> int:
    """Output tiles (``WBN x WBK``, :func:`wgrad_tiles`) of one weight-gradient phase: every layer's of
    its first ``n_jobs`` jobs (all six here; the denoiser alone, ``denoise_phases.py``, runs three)."""
    WBN, WBK = wt
    return sum(layers * triton.cdiv(N, WBN) * triton.cdiv(Kd, WBK)
               for _, N, Kd, layers in wgrad_jobs(d, H, nh)[:n_jobs])


def split_rows(B: int, out_tiles: int, target: int = TARGET_TILES) -> int:
    """Row splits of a step's weight-gradient reduction: enough (output tiles x splits) programs
    for about a wave of 132 SMs, no split under 64 rows. ``out_tiles``: the whole phase's
    (:func:`wgrad_out_tiles`). Each split adds an fp32 partial of every weight that each step's
    phase reads and writes back, so no more splits than the wave needs (default model: 1 at
    B = 256 and at B = 4096, where two splits of 128 x 256 tiles cost the W phases 0.48 ms
    against 0.45 by the cost model, three 0.51)."""
    want = triton.cdiv(target, max(out_tiles, 1))
    return max(1, min(want, triton.cdiv(B, 64)))


def wgrad_plan(dtype: torch.dtype, B: int, d: int, H: int, nh: int, tiles: PhaseTiles,
               n_jobs: int = 6) -> tuple[tuple[int, int], int]:
    """``((WBN, WBK), row splits)`` of a call's weight-gradient phases over its first ``n_jobs``
    jobs: :func:`wgrad_tiles`, and :func:`split_rows` over the phase's output tiles (the backward
    launchers and the cost model all take them from here)."""
    wt = wgrad_tiles(dtype, d, H, nh, tiles, n_jobs)[:2]
    return wt, split_rows(B, wgrad_out_tiles(d, H, nh, wt, n_jobs))


# ----------------------------------------------------------------------------- device code


@triton.jit
def _gated_matmul_tile(acc, a_ptr, b_ptr, stride, rows, w_ptr, n0, N, Kdim,
                       BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr):
    """``acc += (A * B)[:rows, :Kdim] @ W[:Kdim, n0 : n0 + BN]`` (``W [Kdim, N]``); the element-wise
    product is formed as each K slice is loaded."""
    offs_m = tl.arange(0, BM)
    offs_n = n0 + tl.arange(0, BN)
    for k0 in range(0, Kdim, BK):
        offs_k = k0 + tl.arange(0, BK)
        mask = (offs_m[:, None] < rows) & (offs_k[None, :] < Kdim)
        off = offs_m[:, None] * stride + offs_k[None, :]
        x = tl.load(a_ptr + off, mask=mask, other=0.0).to(tl.float32) \
            * tl.load(b_ptr + off, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + offs_k[:, None] * N + offs_n[None, :],
                    mask=(offs_k[:, None] < Kdim) & (offs_n[None, :] < N), other=0.0)
        if LOWP:
            acc = tl.dot(x.to(w.dtype), w, acc)
        else:
            acc = tl.dot(x, w.to(tl.float32), acc, input_precision=PREC)
    return acc


@triton.jit
def _wgrad_tile(acc, gsum, g_ptr, x_ptr, rows, N, Kdim, n0, k0,
                BN: tl.constexpr, BK: tl.constexpr, BB: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr):
    """``acc [BN, BK] += G[:rows, n0:]^T X[:rows, k0:]`` (``G [rows, N]``, ``X [rows, Kdim]``
    contiguous) and ``gsum [BN] += sum_rows G``."""
    offs_n = n0 + tl.arange(0, BN)
    offs_k = k0 + tl.arange(0, BK)
    for r0 in range(0, rows, BB):
        offs_b = (r0 + tl.arange(0, BB)).to(tl.int64)
        bmask = offs_b < rows
        gt = tl.load(g_ptr + offs_b[None, :] * N + offs_n[:, None], mask=bmask[None, :] & (offs_n[:, None] < N),
                     other=0.0)
        x = tl.load(x_ptr + offs_b[:, None] * Kdim + offs_k[None, :], mask=bmask[:, None] & (offs_k[None, :] < Kdim),
                    other=0.0)
        if LOWP:
            acc = tl.dot(gt, x.to(gt.dtype), acc)
        else:
            acc = tl.dot(gt.to(tl.float32), x.to(tl.float32), acc, input_precision=PREC)
        gsum += tl.sum(gt.to(tl.float32), axis=1)
    return acc, gsum


@triton.jit
def unroll_phase_kernel(sched_ptr, phase,
                        xs_ptr, ms_ptr, cond_ptr, e_ptr, dd_ptr,
                        wx_ptr, wh_ptr, bh_ptr, wo_ptr, bo_ptr,
                        wpm_ptr, wpu_ptr, bp_ptr, wpd_ptr, bpd_ptr, wgm_ptr, wgu_ptr, bg_ptr,
                        a_ptr, z_ptr, h_ptr, x0_ptr, p_ptr, sp_ptr, g_ptr, dl_ptr,
                        gm_ptr, gx_ptr, gh_ptr, gcond_ptr, ga_ptr, gz_ptr, gx0_ptr, gdel_ptr, gpq_ptr,
                        pw_x, pw_h, pw_o, pw_pd, pw_im, pw_ix, cs_ptr, tgt_ptr, lp_ptr,
                        B, d, H, NH, K, S, SB, GP,
                        KIND: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                        WBN: tl.constexpr, WBK: tl.constexpr, WBB: tl.constexpr,
                        LOWP: tl.constexpr, PREC: tl.constexpr, EPI: tl.constexpr = 1, WEPI: tl.constexpr = 1,
                        PDL: tl.constexpr = False, GA_TOTAL: tl.constexpr = False,
                        GA_SEED: tl.constexpr = False, X0_LOSS: tl.constexpr = False):
    """One phase (schedule row ``phase``) of the training unroll; one program per output tile.
    ``EPI``: the epilogues run on that many column parts of the tile, one after another
    (``_blocks.col_part``), so a wide tile's loaded epilogue tiles are not all live at once;
    ``WEPI``: the same for the weight-gradient tile's partial (``wgrad_epilogue_parts``).
    ``GA_TOTAL`` (one step only, the diffusion term's): the input layer stores ``ga = gh SiLU'(a)``,
    plus with ``GA_SEED`` a caller's own ``dL/da`` read from ``gcond`` (any dtype; never written):
    ``dL/da`` in full, so the weight-gradient phase's ``dW_x`` includes it. ``X0_LOSS`` (the same
    term's forward): O also forms ``x0 - target`` (``tgt [B, d]``) and stores the loss
    ``mean (x0 - target)^2``'s gradient ``2 (x0 - target) / (B d)`` in ``gx0`` and each tile's share
    of the loss in ``lp[tile]`` (fp32), both from x0 before its rounding to the dtype.

    Slot buffers (``S`` slots of B rows; step i uses slot ``i % S``): ``a``, ``sp``, ``p`` ``[S, B, H]``;
    ``z [NH, S, B, H]``; ``h [NH + 1, S, B, H]``; ``x0``, ``g``, ``dl`` (delta) ``[S, B, d]``. The steps'
    gradients (``GP`` slots, step i in slot ``i % GP``): ``ga [GP, B, H]``, ``gz [GP, max(NH, 1), B, H]``,
    ``gx0``, ``gdel`` ``[GP, B, d]``, ``gpq [GP, B, H + d]``; a W row reduces the steps ``i .. i + side - 1``. States
    ``xs [K, B, d]``, ``ms [K + 1, B, d]``. fp32: ``gm``, ``gx [B, d]``, ``gh``, ``gcond [B, H]``.
    ``pw_*``: the six weight-gradient jobs' fp32 partials ``[layers, SB, N, Kdim]`` (partial j: row
    split j, summed over the steps' W phases); ``cs``: their per-step column sums ``[layers, K, SB, N]``
    one after another, step i at row ``K - 1 - i`` (the time table's), five jobs (the last one
    shares the fifth's G)."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    row = sched_ptr + phase * 8
    i = tl.load(row + 1)
    layer = tl.load(row + 2)
    main = tl.load(row + 3)
    side = tl.load(row + 4)
    i_side = tl.load(row + 5)
    flags = tl.load(row + 6)
    pid = tl.program_id(0)
    z64 = (pid * 0).to(tl.int64)  # runtime int64 zero: sizes equal to 1 arrive as constants
    BH = (z64 + B) * H
    Bd = (z64 + B) * d
    slot = (i % S).to(tl.int64)
    slot2 = (i_side % S).to(tl.int64)
    kr = K - 1 - i            # table row of step i
    kr2 = K - 1 - i_side
    GZ = (z64 + tl.maximum(NH, 1)) * BH  # one G slot of gz [GP, max(NH, 1), B, H]
    GPQ = (z64 + B) * (H + d)           # one G slot of gpq [GP, B, H + d]
    gslot = (i % GP).to(tl.int64)       # step i's slot of the activation gradients
    ga_i = ga_ptr + gslot * BH
    gz_i = gz_ptr + gslot * GZ
    gx0_i = gx0_ptr + gslot * Bd
    gdel_i = gdel_ptr + gslot * Bd
    gpq_i = gpq_ptr + gslot * GPQ
    rb = tl.cdiv(B, BM)
    tiles_h = rb * tl.cdiv(H, BN)
    tiles_d = rb * tl.cdiv(d, BN)
    t = pid
    BE: tl.constexpr = BN // EPI  # epilogue part width
    if KIND == 0:  # A (+ PG of step i_side)
        n_a = main * tiles_h
        n_p = side * tiles_h
        if t < n_a:  # a = x W_x + cond + e ; h_0 = SiLU(a)
            r0, n0 = _tile(t, H, BM, BN)
            acc = blk.matmul_tile(tl.zeros((BM, BN), tl.float32), xs_ptr + i.to(tl.int64) * Bd + r0 * d, d, B - r0,
                                  wx_ptr, n0, H, d, BM, BN, BK, LOWP, PREC)
            for part in tl.static_range(EPI):
                ne = n0 + part * BE
                a = blk.col_part(acc, part, EPI, BM, BN) + blk.load_tile(cond_ptr + r0 * H, H, B - r0, ne, H, BM, BE)
                a += blk.load_vec(e_ptr + kr * H, ne, H, BE)[None, :]
                blk.store_tile(a_ptr + slot * BH + r0 * H, H, B - r0, ne, H, a, BM, BE)
                blk.store_tile(h_ptr + slot * BH + r0 * H, H, B - r0, ne, H, blk.silu(a), BM, BE)
        elif t < n_a + n_p:  # p = m W_pm + x0 W_pu + b_p + e ; sp = SiLU(p)
            r0, n0 = _tile(t - n_a, H, BM, BN)
            m_rows = ms_ptr + i_side.to(tl.int64) * Bd + r0 * d
            acc = blk.matmul_tile(tl.zeros((BM, BN), tl.float32), m_rows, d, B - r0, wpm_ptr, n0, H, d,
                                  BM, BN, BK, LOWP, PREC)
            acc = blk.matmul_tile(acc, x0_ptr + slot2 * Bd + r0 * d, d, B - r0, wpu_ptr, n0, H, d,
                                  BM, BN, BK, LOWP, PREC)
            for part in tl.static_range(EPI):
                ne = n0 + part * BE
                pp = blk.col_part(acc, part, EPI, BM, BN) + blk.load_vec(bp_ptr, ne, H, BE)[None, :]
                pp += blk.load_vec(e_ptr + kr2 * H, ne, H, BE)[None, :]
                blk.store_tile(p_ptr + slot2 * BH + r0 * H, H, B - r0, ne, H, pp, BM, BE)
                blk.store_tile(sp_ptr + slot2 * BH + r0 * H, H, B - r0, ne, H, blk.silu(pp), BM, BE)
        else:  # g = sigmoid(m W_gm + x0 W_gu + b_g)
            r0, n0 = _tile(t - n_a - n_p, d, BM, BN)
            m_rows = ms_ptr + i_side.to(tl.int64) * Bd + r0 * d
            acc = blk.matmul_tile(tl.zeros((BM, BN), tl.float32), m_rows, d, B - r0, wgm_ptr, n0, d, d,
                                  BM, BN, BK, LOWP, PREC)
            acc = blk.matmul_tile(acc, x0_ptr + slot2 * Bd + r0 * d, d, B - r0, wgu_ptr, n0, d, d,
                                  BM, BN, BK, LOWP, PREC)
            for part in tl.static_range(EPI):
                ne = n0 + part * BE
                gg = blk.col_part(acc, part, EPI, BM, BN) + blk.load_vec(bg_ptr, ne, d, BE)[None, :]
                blk.store_tile(g_ptr + slot2 * Bd + r0 * d, d, B - r0, ne, d, tl.sigmoid(gg), BM, BE)
    elif KIND == 1 or KIND == 2:  # R_l or O (+ D of step i_side)
        if KIND == 1:
            n_main = main * tiles_h
        else:
            n_main = main * tiles_d
        h_in = h_ptr + (layer.to(tl.int64) * S + slot) * BH
        if t < n_main:
            if KIND == 1:  # z = h W_l + b_l ; h' = h + SiLU(z)
                r0, n0 = _tile(t, H, BM, BN)
                acc = blk.matmul_tile(tl.zeros((BM, BN), tl.float32), h_in + r0 * H, H, B - r0,
                                      wh_ptr + layer.to(tl.int64) * H * H, n0, H, H, BM, BN, BK, LOWP, PREC)
                for part in tl.static_range(EPI):
                    ne = n0 + part * BE
                    zz = blk.col_part(acc, part, EPI, BM, BN) + blk.load_vec(bh_ptr + layer * H, ne, H, BE)[None, :]
                    blk.store_tile(z_ptr + (layer.to(tl.int64) * S + slot) * BH + r0 * H, H, B - r0, ne, H, zz, BM, BE)
                    res = blk.load_tile(h_in + r0 * H, H, B - r0, ne, H, BM, BE) + blk.silu(zz)
                    blk.store_tile(h_in + S * BH + r0 * H, H, B - r0, ne, H, res, BM, BE)
            else:  # x0 = h W_o + b_o ; x_{i+1} = a_k x_i + b_k x0
                r0, n0 = _tile(t, d, BM, BN)
                acc = blk.matmul_tile(tl.zeros((BM, BN), tl.float32), h_in + r0 * H, H, B - r0,
                                      wo_ptr, n0, d, H, BM, BN, BK, LOWP, PREC)
                sq = 0.0
                for part in tl.static_range(EPI):
                    ne = n0 + part * BE
                    x0 = blk.col_part(acc, part, EPI, BM, BN) + blk.load_vec(bo_ptr, ne, d, BE)[None, :]
                    blk.store_tile(x0_ptr + slot * Bd + r0 * d, d, B - r0, ne, d, x0, BM, BE)
                    if X0_LOSS:  # outside the B x d part x0 is the bias alone: masked out
                        inside = (tl.arange(0, BM)[:, None] < B - r0) & ((ne + tl.arange(0, BE))[None, :] < d)
                        diff = tl.where(inside, x0 - blk.load_tile(tgt_ptr + r0 * d, d, B - r0, ne, d, BM, BE), 0.0)
                        blk.store_tile(gx0_i + r0 * d, d, B - r0, ne, d, diff * (2.0 / Bd), BM, BE)
                        sq += tl.sum(tl.sum(diff * diff, 1), 0)
                    if (flags & 1) != 0:
                        x_rows = xs_ptr + i.to(tl.int64) * Bd + r0 * d
                        xn = tl.load(dd_ptr + 2 * kr) * blk.load_tile(x_rows, d, B - r0, ne, d, BM, BE) \
                            + tl.load(dd_ptr + 2 * kr + 1) * x0
                        blk.store_tile(x_rows + Bd, d, B - r0, ne, d, xn, BM, BE)
                if X0_LOSS:
                    tl.store(lp_ptr + t, sq / Bd)
        elif t < n_main + side * tiles_d:  # delta = sp W_pd + b_pd ; m_{i+1} = m_i + g delta
            r0, n0 = _tile(t - n_main, d, BM, BN)
            acc = blk.matmul_tile(tl.zeros((BM, BN), tl.float32), sp_ptr + slot2 * BH + r0 * H, H, B - r0,
                                  wpd_ptr, n0, d, H, BM, BN, BK, LOWP, PREC)
            for part in tl.static_range(EPI):
                ne = n0 + part * BE
                dl = blk.col_part(acc, part, EPI, BM, BN) + blk.load_vec(bpd_ptr, ne, d, BE)[None, :]
                blk.store_tile(dl_ptr + slot2 * Bd + r0 * d, d, B - r0, ne, d, dl, BM, BE)
                if (flags & 2) != 0:
                    m_rows = ms_ptr + i_side.to(tl.int64) * Bd + r0 * d
                    mm = blk.load_tile(m_rows, d, B - r0, ne, d, BM, BE) \
                        + blk.load_tile(g_ptr + slot2 * Bd + r0 * d, d, B - r0, ne, d, BM, BE) * dl
                    blk.store_tile(m_rows + Bd, d, B - r0, ne, d, mm, BM, BE)
    elif KIND == 3:  # BP (+ BX of step i_side)
        n_p = main * tiles_h
        if t < n_p:  # g_p = ((gm g) W_pd^T) SiLU'(p); column block 0: g_delta, g_q
            r0, n0 = _tile(t, H, BM, BN)
            g_rows = g_ptr + slot * Bd + r0 * d
            acc = _gated_matmul_tile(tl.zeros((BM, BN), tl.float32), gm_ptr + r0 * d, g_rows, d, B - r0,
                                     wpd_ptr, n0, H, d, BM, BN, BK, LOWP, PREC)
            gpq_rows = gpq_i + r0 * (H + d)
            for part in tl.static_range(EPI):
                ne = n0 + part * BE
                gp = blk.col_part(acc, part, EPI, BM, BN) \
                    * blk.dsilu(blk.load_tile(p_ptr + slot * BH + r0 * H, H, B - r0, ne, H, BM, BE))
                blk.store_tile(gpq_rows, H + d, B - r0, ne, H, gp, BM, BE)
            if n0 == 0:
                for j0 in range(0, d, BE):
                    gm = blk.load_tile(gm_ptr + r0 * d, d, B - r0, j0, d, BM, BE)
                    g = blk.load_tile(g_rows, d, B - r0, j0, d, BM, BE)
                    dl = blk.load_tile(dl_ptr + slot * Bd + r0 * d, d, B - r0, j0, d, BM, BE)
                    blk.store_tile(gdel_i + r0 * d, d, B - r0, j0, d, gm * g, BM, BE)
                    blk.store_tile(gpq_rows + H, H + d, B - r0, j0, d, gm * dl * g * (1.0 - g), BM, BE)
        elif t < n_p + side * tiles_d:  # gx <- ga W_x^T + a_k gx  (step i_side)
            r0, n0 = _tile(t - n_p, d, BM, BN)
            acc = tl.load(dd_ptr + 2 * kr2) * blk.load_tile(gx_ptr + r0 * d, d, B - r0, n0, d, BM, BN)
            ga_side = ga_ptr + (i_side % GP).to(tl.int64) * BH  # step i_side's slot
            acc = blk.matmul_tile(acc, ga_side + r0 * H, H, B - r0, wx_ptr, n0, d, H, BM, BN, BK, LOWP, PREC,
                                  W_KN=True)
            blk.store_tile(gx_ptr + r0 * d, d, B - r0, n0, d, acc, BM, BN)
    elif KIND == 4:  # BM: gm <- gm + [g_p | g_q] [W_pm; W_gm] ; gx0 = [g_p | g_q] [W_pu; W_gu] + b_k gx
        # the loaded term joins in the epilogue, part by part: a wide accumulator never starts from a
        # whole loaded tile (that spilled at 128 x 256)
        gpq_rows = gpq_i
        to_gm = t < tiles_d
        if to_gm:
            r0, n0 = _tile(t, d, BM, BN)
            w_g, w_q, src, scale = wpm_ptr, wgm_ptr, gm_ptr, 1.0
        else:
            r0, n0 = _tile(t - tiles_d, d, BM, BN)
            w_g, w_q, src, scale = wpu_ptr, wgu_ptr, gx_ptr, tl.load(dd_ptr + 2 * kr + 1)
        acc = blk.matmul_tile(tl.zeros((BM, BN), tl.float32), gpq_rows + r0 * (H + d), H + d, B - r0, w_g, n0, d, H,
                              BM, BN, BK, LOWP, PREC, W_KN=True)
        acc = blk.matmul_tile(acc, gpq_rows + r0 * (H + d) + H, H + d, B - r0, w_q, n0, d, d,
                              BM, BN, BK, LOWP, PREC, W_KN=True)
        for part in tl.static_range(EPI):
            ne = n0 + part * BE
            out = blk.col_part(acc, part, EPI, BM, BN) + scale * blk.load_tile(src + r0 * d, d, B - r0, ne, d, BM, BE)
            if to_gm:
                blk.store_tile(gm_ptr + r0 * d, d, B - r0, ne, d, out, BM, BE)
            else:
                blk.store_tile(gx0_i + r0 * d, d, B - r0, ne, d, out, BM, BE)
    elif KIND == 5 or KIND == 6:  # BO / BR_l: gh (+)= G W^T, then the gradient below the layer's SiLU
        r0, n0 = _tile(t, H, BM, BN)
        if KIND == 5:
            acc = blk.matmul_tile(tl.zeros((BM, BN), tl.float32), gx0_i + r0 * d, d, B - r0,
                                  wo_ptr, n0, H, d, BM, BN, BK, LOWP, PREC, W_KN=True)
        else:  # gh's running value joins in the epilogue (as in BM)
            acc = blk.matmul_tile(tl.zeros((BM, BN), tl.float32), gz_i + layer.to(tl.int64) * BH + r0 * H, H,
                                  B - r0, wh_ptr + layer.to(tl.int64) * H * H, n0, H, H, BM, BN, BK, LOWP, PREC,
                                  W_KN=True)
        below = layer - 1  # the residual layer under this gradient (-1: the input layer)
        for part in tl.static_range(EPI):
            ne = n0 + part * BE
            gh = blk.col_part(acc, part, EPI, BM, BN)
            if KIND == 6:
                gh += blk.load_tile(gh_ptr + r0 * H, H, B - r0, ne, H, BM, BE)
            if below >= 0:
                zb = blk.load_tile(z_ptr + (below.to(tl.int64) * S + slot) * BH + r0 * H, H, B - r0, ne, H, BM, BE)
                blk.store_tile(gz_i + below.to(tl.int64) * BH + r0 * H, H, B - r0, ne, H, gh * blk.dsilu(zb), BM, BE)
                blk.store_tile(gh_ptr + r0 * H, H, B - r0, ne, H, gh, BM, BE)
            else:
                ga = gh * blk.dsilu(blk.load_tile(a_ptr + slot * BH + r0 * H, H, B - r0, ne, H, BM, BE))
                if GA_TOTAL:  # one step: ga in full is dL/dcond, gcond (any dtype) only its seed
                    if GA_SEED:
                        ga += blk.load_tile(gcond_ptr + r0 * H, H, B - r0, ne, H, BM, BE)
                    blk.store_tile(ga_i + r0 * H, H, B - r0, ne, H, ga, BM, BE)
                else:
                    blk.store_tile(ga_i + r0 * H, H, B - r0, ne, H, ga, BM, BE)
                    gc = blk.load_tile(gcond_ptr + r0 * H, H, B - r0, ne, H, BM, BE) + ga
                    blk.store_tile(gcond_ptr + r0 * H, H, B - r0, ne, H, gc, BM, BE)
    else:  # W of steps i .. i + side - 1: dW (+)= sum_steps G^T X; tiles over (job, layer, row split, out, in)
        kb_d = tl.cdiv(d, WBK)
        kb_h = tl.cdiv(H, WBK)
        c0 = SB * tl.cdiv(H, WBN) * kb_d             # w_x      [H, d]
        c1 = NH * SB * tl.cdiv(H, WBN) * kb_h        # w_hidden [NH, H, H]
        c2 = SB * tl.cdiv(d, WBN) * kb_h             # w_out, w_pd [d, H]
        c4 = SB * tl.cdiv(H + d, WBN) * kb_d         # w_in_m, w_in_x [H + d, d]
        Kl = z64 + K * SB
        # per job: G's buffer and one step's slot of it; X's buffer, one step's stride and whether
        # X is a per-step state (indexed by the step) or an activation (by its slot, step % S)
        # (z64 keeps every branch's values the same type)
        if t < c0:
            j, N, Kd = pid * 0, H + pid * 0, d + pid * 0
            g_buf, g_step, x_buf, x_step, state = ga_ptr, BH, xs_ptr, Bd, pid * 0 + 1
            part, glay, xlay, coff = pw_x, z64, z64, z64
        elif t < c0 + c1:
            t -= c0
            j, N, Kd = pid * 0 + 1, H + pid * 0, H + pid * 0
            g_buf, g_step, x_buf, x_step, state = gz_ptr, GZ, h_ptr, BH, pid * 0
            part, glay, xlay, coff = pw_h, z64 + BH, z64 + S * BH, Kl * H
        elif t < c0 + c1 + c2:
            t -= c0 + c1
            j, N, Kd = pid * 0 + 2, d + pid * 0, H + pid * 0
            g_buf, g_step, x_buf, x_step, state = gx0_ptr, Bd, h_ptr + (z64 + NH) * S * BH, BH, pid * 0
            part, glay, xlay, coff = pw_o, z64, z64, Kl * H + NH * Kl * H
        elif t < c0 + c1 + 2 * c2:
            t -= c0 + c1 + c2
            j, N, Kd = pid * 0 + 3, d + pid * 0, H + pid * 0
            g_buf, g_step, x_buf, x_step, state = gdel_ptr, Bd, sp_ptr, BH, pid * 0
            part, glay, xlay, coff = pw_pd, z64, z64, Kl * H + NH * Kl * H + Kl * d
        elif t < c0 + c1 + 2 * c2 + c4:
            t -= c0 + c1 + 2 * c2
            j, N, Kd = pid * 0 + 4, H + d + pid * 0, d + pid * 0
            g_buf, g_step, x_buf, x_step, state = gpq_ptr, GPQ, ms_ptr, Bd, pid * 0 + 1
            part, glay, xlay, coff = pw_im, z64, z64, Kl * H + NH * Kl * H + 2 * Kl * d
        else:
            t -= c0 + c1 + 2 * c2 + c4
            j, N, Kd = pid * 0 + 5, H + d + pid * 0, d + pid * 0
            g_buf, g_step, x_buf, x_step, state = gpq_ptr, GPQ, x0_ptr, Bd, pid * 0
            part, glay, xlay, coff = pw_ix, z64, z64, z64
        nbk = tl.cdiv(Kd, WBK)
        per_layer = SB * tl.cdiv(N, WBN) * nbk
        lay = t // per_layer
        t = t % per_layer
        split = t // (tl.cdiv(N, WBN) * nbk)
        t = t % (tl.cdiv(N, WBN) * nbk)
        n0 = (t // nbk) * WBN
        k0 = (t % nbk) * WBK
        rows_split = tl.cdiv(B, SB)
        r_lo = split * rows_split
        r_hi = tl.minimum(r_lo + rows_split, B)
        offs_n = n0 + tl.arange(0, WBN)
        acc = tl.zeros((WBN, WBK), tl.float32)
        for s in range(side):  # the steps this phase reduces, each from its own G slot and X
            step = i + s
            xi = tl.where(state == 1, step, step % S).to(tl.int64)
            g_rows = g_buf + (step % GP).to(tl.int64) * g_step + lay.to(tl.int64) * glay + r_lo.to(tl.int64) * N
            x_rows = x_buf + xi * x_step + lay.to(tl.int64) * xlay + r_lo.to(tl.int64) * Kd
            acc, gsum = _wgrad_tile(acc, tl.zeros((WBN,), tl.float32), g_rows, x_rows,
                                    r_hi - r_lo, N, Kd, n0, k0, WBN, WBK, WBB, LOWP, PREC)
            if j < 5:
                if k0 == 0:  # the step's column sums, at its time-table row
                    cp = cs_ptr + coff + ((lay * K + (K - 1 - step)) * SB + split).to(tl.int64) * N + offs_n
                    tl.store(cp, gsum, mask=offs_n < N)
        WE: tl.constexpr = WBK // WEPI  # the partial's read-modify-write in column parts, as EPI
        for wp in tl.static_range(WEPI):
            offs_k = k0 + wp * WE + tl.arange(0, WE)
            pmask = (offs_n[:, None] < N) & (offs_k[None, :] < Kd)
            pp = part + ((lay * SB + split).to(tl.int64) * N + offs_n[:, None]) * Kd + offs_k[None, :]
            val = blk.col_part(acc, wp, WEPI, WBN, WBK)
            if (flags & 4) != 0:
                val += tl.load(pp, mask=pmask, other=0.0)
            tl.store(pp, val, mask=pmask)


# ----------------------------------------------------------------------------- launcher

_SCHEDULES: dict = {}  # (build, args, device) -> (forward rows, backward rows, int32 table [rows, 8])
_ACT_NAMES = ("a", "z", "h", "x0", "p", "sp", "g", "dl")


def _act_shapes(B, d, H, nh, slots):
    return dict(a=(slots, B, H), z=(max(nh, 1), slots, B, H), h=(nh + 1, slots, B, H), x0=(slots, B, d),
                p=(slots, B, H), sp=(slots, B, H), g=(slots, B, d), dl=(slots, B, d))


def _views(flat, shapes, only=None):
    """``{name: part}`` of consecutive parts of the 1-D ``flat`` (the prefix ``shapes`` covers), for
    the names in ``only`` (default: all), in one split. The parts stay 1-D: a kernel argument is a
    pointer, and a reshaping view would cost a host dispatch for nothing; a caller that needs a
    shape views that part itself."""
    sizes = [math.prod(shape) for shape in shapes.values()]
    parts = torch.split(flat if sum(sizes) == flat.numel() else flat[:sum(sizes)], sizes)
    return {name: p for name, p in zip(shapes, parts) if only is None or name in only}


# unroll_phases_backward's results, in the order of translator_unroll_backward's
GRAD_ORDER = ("gx", "gm", "gcond", "grad_e", "w_x", "w_hidden", "b_hidden", "w_out", "b_out", "w_pm", "w_pu", "b_p",
              "w_pd", "b_pd", "w_gm", "w_gu", "b_g")
# where each weight-gradient job's partial lands in the flat gradient (a PFIN input job: two weights)
_PARTIAL_PLACES = (("w_x",), ("w_hidden",), ("w_out",), ("w_pd",), ("w_pm", "w_gm"), ("w_pu", "w_gu"))


def grad_layout(B: int, d: int, H: int, nh: int, K: int) -> list[tuple[str, tuple]]:
    """``(name, shape)`` of each gradient in the flat buffer :func:`unroll_phases_backward` fills, in
    an order that keeps together what one fill or one reduction writes: gx and gcond; a PFIN input
    job's two weights; b_out and b_pd; b_p and b_g."""
    return [("gm", (B, d)), ("gx", (B, d)), ("gcond", (B, H)), ("grad_e", (K, H)), ("w_x", (H, d)),
            ("w_hidden", (nh, H, H)), ("b_hidden", (nh, H)), ("w_out", (d, H)), ("w_pm", (H, d)), ("w_gm", (d, d)),
            ("w_pu", (H, d)), ("w_gu", (d, d)), ("w_pd", (d, H)), ("b_out", (d,)), ("b_pd", (d,)), ("b_p", (H,)),
            ("b_g", (d,))]


def _span(flat, layout, first: str, last: str | None = None):
    """The 1-D view of ``flat`` from ``first``'s start to ``last``'s end (``first`` alone by default)."""
    last = last or first
    o, lo, hi = 0, None, None
    for name, shape in layout:
        if name == first:
            lo = o
        o += math.prod(shape)
        if name == last:
            hi = o
    return flat[lo:hi]


def split_grads(flat, layout, order) -> tuple:
    """The views of ``flat`` (laid out as ``layout``) named by ``order``."""
    shapes = dict(layout)
    parts = _views(flat, shapes)
    return tuple(parts[name] if len(shapes[name]) == 1 else parts[name].view(shapes[name]) for name in order)


def _in_dtype(ws, layout, dtype, flat: bool):
    out = ws.to(dtype)  # one cast for every gradient (none in fp32)
    return out if flat else split_grads(out, layout, GRAD_ORDER)


def _act_numel(B, d, H, nh, slots):
    return sum(math.prod(shape) for shape in _act_shapes(B, d, H, nh, slots).values())


def saved_numel(B: int, d: int, H: int, layers: int, K: int, policy: str) -> int:
    """Values of the flat ``acts`` the forward returns under ``policy`` (0 under ``"recompute"``)."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    return _act_numel(B, d, H, layers - 1, K) if policy == "save" else 0


def saved_bytes(B: int, d: int, H: int, layers: int, K: int, dtype: torch.dtype, policy: str) -> int:
    """Bytes the forward keeps for the backward under ``policy``: the states ``xs [K, B, d]``,
    ``ms [K + 1, B, d]`` and the flat ``acts``."""
    numel = (2 * K + 1) * B * d + saved_numel(B, d, H, layers, K, policy)
    return numel * torch.empty((), dtype=dtype).element_size()


def schedule_table(build, args: tuple, device) -> tuple[list[tuple], list[tuple], torch.Tensor]:
    """``(forward rows, backward rows, int32 table on device)`` of ``build(*args)`` (this module's
    :func:`build_schedule`, or another schedule of the phase kernel), made once per
    (build, args, device)."""
    key = (build, args, device)
    entry = _SCHEDULES.get(key)
    if entry is None:
        fwd, bwd = build(*args)
        table = torch.tensor(fwd + bwd, dtype=torch.int32, device=device).contiguous()
        entry = _SCHEDULES[key] = (fwd, bwd, table)
    return entry


def check_flat_acts(acts, want: int, dtype, device, what: str = "") -> None:
    """``acts`` must be a forward's flat ``[want]`` activations of ``dtype`` on ``device`` (before any launch)."""
    if not isinstance(acts, torch.Tensor) or acts.dim() != 1 or acts.numel() != want or acts.dtype != dtype \
            or acts.device != device:
        raise ValueError(f"acts must be the forward's flat {dtype} activations of {want} values on {device}{what}, "
                         f"got {getattr(acts, 'shape', type(acts).__name__)}")


def phase_jobs(row, B: int, d: int, H: int, nh: int, n_wgrad: int = 6) -> list[tuple]:
    """The GEMM jobs of one schedule row as ``(name, M, N, K)`` (``[M, N]`` outputs reducing over K;
    a weight-gradient job's M x N is its (layers x out, in), its K the B rows of each step the
    phase reduces; the first ``n_wgrad`` weight-gradient jobs run); the launcher's grids and the
    cost model both count from these."""
    kind, main, side = row[0], row[3], row[4]
    jobs = {F_A: [("A", B, H, d)] * main + [("P", B, H, 2 * d), ("G", B, d, 2 * d)] * side,
            F_R: [("R", B, H, H)] * main + [("D", B, d, H)] * side,
            F_O: [("O", B, d, H)] * main + [("D", B, d, H)] * side,
            B_P: [("BP", B, H, d)] * main + [("BX", B, d, H)] * side,
            B_M: [("BM", B, d, H + d), ("BM_x0", B, d, H + d)],
            B_O: [("BO", B, H, d)], B_R: [("BR", B, H, H)]}.get(kind)
    if jobs is not None:
        return jobs
    return [(name, N * layers, Kd, B * side) for name, N, Kd, layers in wgrad_jobs(d, H, nh)[:n_wgrad] if layers]


def _grid(row, B, d, H, nh, tiles, wt, SP, n_wgrad) -> int:
    """Programs of one phase (one per output tile of each job), as the kernel decodes them."""
    if row[0] != W_GRAD:
        return sum(triton.cdiv(M, tiles.BM) * triton.cdiv(N, tiles.BN) for _, M, N, _ in phase_jobs(row, B, d, H, nh))
    return SP * wgrad_out_tiles(d, H, nh, wt, n_wgrad)


class _Call:
    """One call's arguments for :func:`unroll_phase_kernel` and the launches over a row range
    (``wgrad_jobs``: the weight-gradient phase runs that many of its jobs, the first ones;
    ``ga_total``, ``ga_seed``: the kernel's ``GA_TOTAL``, ``GA_SEED``; ``x0_loss``: ``(target, lp)``
    for its ``X0_LOSS``, with ``grads["gx0"]`` the gradient it stores; ``g_slots``: the G slots
    ``grads``' activation-gradient buffers hold, :func:`grad_slots`; ``graph``: where
    ``_graphs.usable``, a run goes through ``_graphs.GRAPHS``, keyed by :meth:`graph_key`, so a
    recurring run replays one CUDA graph)."""

    def __init__(self, xs, ms, cond, e_table, ddim, weights, nh, acts, grads, slots, splits, tiles, pdl,
                 wgrad_jobs: int = 6, wide: PhaseTiles | None = None, ga_total: bool = False,
                 ga_seed: bool = False, x0_loss: tuple | None = None, g_slots: int = 1, graph: bool = False):
        B, d = xs.shape[1], xs.shape[2]
        H = cond.shape[1]
        K = xs.shape[0]
        dtype, device = weights[0].dtype, xs.device
        self.dims = (B, d, H, nh, K)
        self.tiles, self.wide = call_tiles(tiles, wide, B, d, H, dtype)
        self.wt = wgrad_tiles(dtype, d, H, nh, self.tiles, wgrad_jobs)[:2]
        self.wlaunch = wgrad_launch_tiles(self.tiles, dtype)
        self.slots, self.splits, self.wgrad_jobs = slots, splits, wgrad_jobs
        g = grads or {}
        dummy = xs  # any valid pointer for buffers a phase range never touches
        a = [acts[n] for n in _ACT_NAMES]
        names = ("gm", "gx", "gh", "gcond", "ga", "gz", "gx0", "gdel", "gpq")
        gb = [dummy if g.get(n) is None else g[n] for n in names]
        gb += list(g.get("part", [dummy] * 6)) + [g.get("cs", dummy)] + list(x0_loss or (dummy, dummy))
        self.args = (xs, ms, cond, e_table, ddim, *_pointers(weights, nh), *a, *gb,
                     B, d, H, nh, K, slots, splits, g_slots)
        self.graph = graph = graph and _graphs.usable(device)
        if graph and pdl and _graphs.pdl_capture_failed():
            pdl = False  # what a capture would fall back to anyway: keys stay those of the graphs
        self.lowp_prec, self.pdl, self.ga = dot_mode(dtype, device), pdl, (ga_total, ga_seed)
        self.x0_loss = x0_loss is not None
        self.metas = {}  # PhaseTiles -> launch meta (a call launches on at most three: its tile, the wide
        # one, the weight-gradient phase's)

    def meta(self, t: PhaseTiles) -> dict:
        meta = self.metas.get(t)
        if meta is None:
            lowp, prec = self.lowp_prec
            meta = self.metas[t] = dict(BM=t.BM, BN=t.BN, BK=t.BK, EPI=t.epi_parts, WBN=self.wt[0], WBK=self.wt[1],
                                        WBB=32, WEPI=wgrad_epilogue_parts(self.wt[1]), LOWP=lowp, PREC=prec,
                                        num_warps=t.num_warps, num_stages=t.num_stages, maxnreg=t.maxnreg,
                                        PDL=self.pdl, GA_TOTAL=self.ga[0], GA_SEED=self.ga[1],
                                        X0_LOSS=self.x0_loss)
            if self.pdl:
                meta["launch_pdl"] = True
        return meta

    def graph_key(self, table, rows, first) -> tuple:
        """Everything the launches of ``rows`` (schedule rows ``first ..`` of ``table``) depend on:
        the schedule table's address and the row range, the tiles, the meta-parameters' inputs, and
        every argument (a tensor by its address and dtype; sizes as they are). Equal keys, equal
        launches: what makes a replayed graph a plain run."""
        return (table.device, table.data_ptr(), first, len(rows), self.tiles, self.wide, self.wt, self.wlaunch,
                self.wgrad_jobs, self.lowp_prec, self.pdl, self.ga, self.x0_loss,
                tuple((a.data_ptr(), a.dtype) if isinstance(a, torch.Tensor) else a for a in self.args))

    def run(self, table, rows, first):
        """Launch the phases of ``rows`` (schedule rows ``first ..`` of ``table``), one group; with
        ``graph`` (and not while launches are being recorded) through ``_graphs.GRAPHS``."""
        with launch_group():
            if not self.graph or recording():
                self._launch(table, rows, first, self.pdl)
            else:
                _graphs.GRAPHS.run(self.graph_key(table, rows, first),
                                   lambda pdl: self._launch(table, rows, first, pdl), table.device, self.pdl)

    def _launch(self, table, rows, first, pdl):
        if pdl != self.pdl:  # a capture that fell back to plain launches
            self.pdl, self.metas = pdl, {}
        B, d, H, nh, K = self.dims
        for p, row in enumerate(rows):
            tiles = self.wlaunch if row[0] == W_GRAD else row_tiles(row, B, d, H, nh, K, self.tiles, self.wide)
            grid = _grid(row, B, d, H, nh, tiles, self.wt, self.splits, self.wgrad_jobs)
            launch(unroll_phase_kernel, (grid,), table, first + p, *self.args, KIND=row[0], **self.meta(tiles))


def call_tiles(tiles: PhaseTiles | None, wide: PhaseTiles | None, B: int, d: int, H: int, dtype) -> tuple:
    """``(tiles, wide)`` of a call: both picked (:func:`pick_unroll_tiles`, :func:`pick_wide_tiles`)
    when ``tiles`` is None; given tiles are used as given (``wide`` None: every phase on ``tiles``)."""
    if tiles is None:
        tiles = pick_unroll_tiles(B, d, H, dtype)
        return tiles, pick_wide_tiles(tiles, d, H)
    return tiles, wide


def _check_states(xs, ms, B, d, K, dtype, device):
    for name, t, planes in (("xs", xs, K), ("ms", ms, K + 1)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (planes, B, d) or t.dtype != dtype \
                or t.device != device or not t.is_contiguous():
            got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a contiguous {dtype} [{planes}, {B}, {d}] tensor on {device}, got {got}")


def unroll_phases_forward(x_start, m_start, cond, e_table, ddim, w_x, w_hidden, b_hidden, w_out, b_out,
                          w_pm, w_pu, b_p, w_pd, b_pd, w_gm, w_gu, b_g, *, policy: str = "save",
                          tiles: PhaseTiles | None = None, wide: PhaseTiles | None = None, pdl: bool = False,
                          graph: bool = False):
    """The unrolled loop as ``K (L + 1) + 2`` phase launches (arguments as
    :func:`seda_fast.kernels.translator_unroll_forward`; ``pdl``: programmatic dependent launch,
    Hopper only; ``graph``: on CUDA, through ``_graphs.GRAPHS``, one graph replay once the same
    launches recur, ignored elsewhere).

    Returns ``(m [B, d], xs [K, B, d], ms [K + 1, B, d], acts)`` in the weights' dtype: the per-step
    states and, under ``policy="save"``, every step's activations as one flat tensor (empty under
    ``"recompute"``). :func:`unroll_phases_backward` takes all three with the same ``policy``."""
    weights = (w_x, w_hidden, b_hidden, w_out, b_out, w_pm, w_pu, b_p, w_pd, b_pd, w_gm, w_gu, b_g)
    B, d, H, nh, K = _check(x_start, cond, e_table, ddim, weights, "x_start")
    check_matrix("m_start", m_start, B, d, None, x_start.device, batch_rows=True)
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    dtype, device = w_x.dtype, x_start.device
    slots = K if policy == "save" else 1
    xs = torch.empty(K, B, d, dtype=dtype, device=device)
    ms = torch.empty(K + 1, B, d, dtype=dtype, device=device)
    xs[0].copy_(x_start)
    ms[0].copy_(m_start)
    flat = torch.empty(_act_numel(B, d, H, nh, slots), dtype=dtype, device=device)
    acts = _views(flat, _act_shapes(B, d, H, nh, slots))
    fwd, _, table = schedule_table(build_schedule, (nh + 1, K, policy), device)
    _Call(xs, ms, cond, e_table, ddim, weights, nh, acts, None, slots, 1, tiles, pdl, wide=wide,
          graph=graph).run(table, fwd, 0)
    return ms[K].clone(), xs, ms, (flat if policy == "save" else flat.new_empty(0))


def unroll_phases_backward(grad_m, xs, ms, acts, cond, e_table, ddim, w_x, w_hidden, b_hidden, w_out, b_out,
                           w_pm, w_pu, b_p, w_pd, b_pd, w_gm, w_gu, b_g, *, policy: str = "save",
                           tiles: PhaseTiles | None = None, wide: PhaseTiles | None = None, pdl: bool = False,
                           flat: bool = False, graph: bool = False):
    """Every gradient of :func:`unroll_phases_forward` from ``grad_m = dL/dm [B, d]`` and its saved
    ``xs``, ``ms``, ``acts``, in the order of :func:`seda_fast.kernels.translator_unroll_backward`
    (inputs, then the 13 weights), in the weights' dtype: views of one buffer laid out as
    :func:`grad_layout`, which ``flat=True`` returns instead. Accumulated in fp32 in a fixed order
    (bitwise reproducible) into one fp32 buffer of that layout, cast once. Launches:
    :func:`phase_counts` (``graph``: as :func:`unroll_phases_forward`)."""
    weights = (w_x, w_hidden, b_hidden, w_out, b_out, w_pm, w_pu, b_p, w_pd, b_pd, w_gm, w_gu, b_g)
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if not isinstance(xs, torch.Tensor) or xs.dim() != 3:
        raise ValueError(f"xs must be a [K, B, d] tensor, got {getattr(xs, 'shape', type(xs).__name__)}")
    B, d, H, nh, K = _check(xs[0], cond, e_table, ddim, weights, "xs[k]")
    dtype, device = w_x.dtype, xs.device
    _check_states(xs, ms, B, d, K, dtype, device)
    check_matrix("grad_m", grad_m, B, d, None, device, batch_rows=True)
    slots = K if policy == "save" else 1
    shapes = _act_shapes(B, d, H, nh, slots)
    if policy == "save":
        check_flat_acts(acts, _act_numel(B, d, H, nh, slots), dtype, device, " (policy='save')")
        act = _views(acts, shapes)
    else:
        act = _views(torch.empty(_act_numel(B, d, H, nh, 1), dtype=dtype, device=device), shapes)
    tiles, wide = call_tiles(tiles, wide, B, d, H, dtype)
    _, splits = wgrad_plan(dtype, B, d, H, nh, tiles)
    f32 = dict(device=device, dtype=torch.float32)
    e = lambda *shape: torch.empty(*shape, dtype=dtype, device=device)  # noqa: E731
    jobs = wgrad_jobs(d, H, nh)
    cs_sizes = [layers * K * splits * N for _, N, _, layers in jobs[:5]]
    # every fp32 result in one buffer laid out as the flat gradient (grad_layout), cast once at the end
    layout = grad_layout(B, d, H, nh, K)
    ws = torch.empty(sum(math.prod(shape) for _, shape in layout), **f32)
    at = _views(ws, dict(layout))  # 1-D, one split: shaped below only where an op needs it
    at["gm"].copy_(grad_m.view(-1))
    _span(ws, layout, "gx", "gcond").zero_()
    # with one row split a job's partial is its gradient: the kernel accumulates it in place
    place = lambda names: at[names[0]] if len(names) == 1 else _span(ws, layout, *names)  # noqa: E731
    part = [torch.empty(1, **f32) if not layers else place(names) if splits == 1 else
            torch.empty(layers, splits, N, Kd, **f32) for (_, N, Kd, layers), names in zip(jobs, _PARTIAL_PLACES)]
    cs_buf = torch.empty(sum(cs_sizes), **f32)
    P = grad_slots(K, policy)  # the activation gradients of P steps at once, one G slot each
    g = dict(gm=at["gm"], gx=at["gx"], gh=torch.empty(B, H, **f32), gcond=at["gcond"], ga=e(P, B, H),
             gz=e(P, max(nh, 1), B, H), gx0=e(P, B, d), gdel=e(P, B, d), gpq=e(P, B, H + d), cs=cs_buf, part=part)
    fwd, bwd, table = schedule_table(build_schedule, (nh + 1, K, policy), device)
    _Call(xs, ms, cond, e_table, ddim, weights, nh, act, g, slots, splits, tiles, pdl, wide=wide, g_slots=P,
          graph=graph).run(table, bwd, len(fwd))
    del g, act

    if splits > 1:  # the partials summed over their row splits in a fixed order, into their places
        for p, names, (_, N, Kd, layers) in zip(part, _PARTIAL_PLACES, jobs):
            if layers:
                torch.sum(p, 1, out=place(names).view(layers, N, Kd))
    css = torch.split(cs_buf, cs_sizes)
    by_step = lambda i, n: css[i].view(K, splits, n).sum(1) if splits > 1 else css[i].view(K, n)  # noqa: E731
    torch.add(by_step(0, H), by_step(4, H + d)[:, :H], out=at["grad_e"].view(K, H))  # rows in the table's order
    if nh:
        torch.sum(css[1].view(nh, K * splits, H), 1, out=at["b_hidden"].view(nh, H))
    lo, hi = sum(cs_sizes[:2]), sum(cs_sizes[:4])  # b_out's and b_pd's sums: consecutive, as in the layout
    torch.sum(cs_buf[lo:hi].view(2, K * splits, d), 1, out=_span(ws, layout, "b_out", "b_pd").view(2, d))
    torch.sum(css[4].view(K * splits, H + d), 0, out=_span(ws, layout, "b_p", "b_g"))
    return _in_dtype(ws, layout, dtype, flat)
