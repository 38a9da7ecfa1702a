"""Fused inference as a fixed schedule of phases: every phase is one GEMM over ALL rows.

``visual [B, Dv] -> (logits [B, C], s [B, d], m [B, d])``, the same chain as the row-block kernels
(``semantic_sampler.py`` + ``translator_pfin.py``) and the eager reference, but tiled the other way
round: a phase computes one (or, when jobs ride together, two or three) ``[B, N]`` GEMM outputs cut
into ``BM x BN`` tiles (row block x column block), and the tiles of a phase are spread over all
programs, so a batch of 64 keeps ~128 programs busy instead of 4.

Activations live in global ``[B, width]`` buffers in the compute dtype (fp32 for fp32 models,
fp16/bf16 otherwise); every tile accumulates in fp32 registers and stores its ``[BM, BN]`` result
once. There is no per-program fp32 scratch slab.

Phases (jobs and their fused element-wise work; ``n`` = the output width)::

    PROJ     y    = v W_v + b_v                                           n = d,  K = Dv
    COND_LN  cond = LN(y) W_c1 + b_a1                                     n = H,  K = d
             (the LayerNorm is folded into the prologue: each tile computes its rows' mean/rstd
             from y, then normalises every K slice before the dot; the column-block-0 tiles also
             write z (= m's start) and the Learner's start x = c0 z)
    -- Learner, k = K1 .. 1 --
    A        h0   = SiLU(x W_x + cond + e_k)                              n = H,  K = d
    R (L-1x) h'   = h + SiLU(h W_l + b_l)          (ping-pong h buffers)  n = H,  K = H
    O        x0   = h W_o + b_o ; x <- a_k x + b_k x0  (last step: into s)  n = d,  K = H
    COND_T   cond = s W_c2 + b_a2 ; column-block-0 tiles: x = c0 s + c1 xi  n = H,  K = d
    -- Translator, k = K2 .. 1 (PFIN of step k+1 rides in step k's phases) --
    A  + P(k+1) + G(k+1)   P: sp = SiLU(m W_pm + x0 W_pu + b_p + e_{k+1})   n = H, K = 2d
                           G: g  = sigmoid(m W_gm + x0 W_gu + b_g)          n = d, K = 2d
    R  + D(k+1)            D: m <- m + g (sp W_pd + b_pd)   (in place)      n = d, K = H
    R (further layers), O (+ D(k+1) when L = 1: it rides in O instead)
    -- tail --
    P(1) + G(1) ; D(1) ; HEAD  logits = m W_h + b_h                        n = C, K = d

The Translator's x does not depend on m, so PFIN's two phases of step k+1 (they need x0_hat of step
k+1 and the m of step k+2) run beside the first two phases of step k. Phases per call
(:func:`phase_count`, L = layers = 1 input layer + L-1 residual, so A, R x (L-1), O = L+1 per step)::

    2 + K1 (L + 1) + 1 + K2 (L + 1) + 3  =  6 + (K1 + K2)(L + 1)

The default config (L = 2, K1 = K2 = 10) has **66 phases per call** unfolded and **45** folded
(below; the default up to B = 256): ``impl="phases"`` makes one launch per phase (one CUDA-graph
replay once captured on CUDA), ``impl="persistent"`` one launch with a grid barrier between phases.

Folded steps (``fold=True``; :func:`use_fold`: B <= 256). The O phase exists to make x, which the
next step only reads through ``u = x W_x``; DDIM's update is linear, so ``u`` can be carried instead,
and with it the stage's constant ``cond``: the loop state is ``w = u + cond`` (fp32 ``[B, H]``, the
buffer ``u``), and::

    w_{k-1} = a_k w_k + (1 - a_k) cond + b_k (h W_o + b_o) W_x^T
            = a_k w_k + (1 - a_k) cond + b_k (h (W_x W_o)^T + W_x b_o),      h_{k-1} = SiLU(w_{k-1} + e)

With the products ``W_x W_o [H, H]`` and ``W_x b_o`` made once per weight version (float64, rounded
once to the compute dtype; ``seda_fast.ops.weights.folded``), step k's A phase reads the previous
step's last h and updates ``w`` in its epilogue (which reads the cond tile as before) before the
SiLU. PFIN's x0_hat enters only through ``x0_hat W_pu^T`` and ``x0_hat W_gu^T``, so P and G read h
through ``W_pu W_o``, ``W_gu W_o`` (biases ``b_p + W_pu b_o``, ``b_g + W_gu b_o``; ``folded_pfin``).
A stage's first step reads its start ``x = c0 c + c1 xi`` (``c`` = z for the Learner, s for the
Translator; the Learner has no xi) only through ``w = x W_x^T + c W_c^T + b_c``, that is
``c (W_c + c0 W_x)^T + xi (c1 W_x)^T + b_c`` (``folded_start``), a GEMM on the condition phase's own
input: so it rides in that phase as a second job (``A0``, as many tiles again, no read of what the
phase writes). The Translator then has no O phase at all and reads no x; the Learner needs x for
s, so its x update (``O``) rides in the next step's A phase and only its last step keeps an O phase
of its own (into s). Per step L phases instead of L + 1, less the two first A's::

    1 + [COND_LN+A0, R x (L-1)] + K1-1 x [AF(+O), R x (L-1)] + O(s)
      + [COND_T+A0, R..] + K2-1 x [AF+P+G, R+D, R..] + 3
      = 5 + (K1 + K2) L      (+ K2 - 1 phases of D alone at L = 1, where no R phase carries it)

Cost: a folded A reduces over H instead of d and P, G over ``d + H`` instead of ``2d`` (at B = 64
about 20 % more L2 -> SM bytes over the call), for 21 fewer phase boundaries (default model). The cost
model (``seda_fast.tools.cost_phases``) puts folded ahead at every B <= 256 (B = 64: 0.151 ms
graph-replayed against 0.183 unfolded; persistent 0.136 against 0.162) and behind from about
B = 1150, where compute and L2 bytes, not boundaries, set the time (B = 1024: 3 % ahead on the
per-phase tiles; the switch stays at 256, where the folded kernels are compile-checked, until a GPU
run compares them). Numbers: the same in exact arithmetic;
in fp32 within 5e-7 of eager in the tests; bf16 and fp16 pass flash-attention's rule (the tests).
A folded call runs the kernels compiled with ``FOLD=True`` (a constexpr), so an unfolded one
compiles none of the folded code. The h buffers: a step writes its first h into ``h[hb]``
(``FLAG_H1``) and the next step's folded A writes the other buffer than the one it reads, so two
buffers serve every L.

Buffers (all ``[B, width]``, compute dtype): ``y``, ``z`` (= m, updated in place by D), ``x``,
``s``, ``x0``, ``g`` (width d); ``cond``, ``h`` (two), ``sp`` (width H); ``logits`` (C); folded, ``u``
(the loop state w, width H, fp32). A buffer a
phase reads whole rows of (the GEMM operand) is never written in that phase; in-place updates
(x in O, m in D) touch only the tile's own elements.

Two schedulers over the same phase bodies (:func:`_phase`) and the same schedule table
(:func:`build_schedule`, int32 ``[n_phases, 8]`` rows, read by the kernels):

* ``"phases"``: one launch of :func:`infer_phase_kernel` per phase (``KIND`` constexpr), grid =
  that phase's tile count. Runs under the interpreter. On CUDA the whole call can be captured in
  a CUDA graph (``graph=True``), cached per (batch, dtype, device, weight/table pointers). On
  Hopper the launches use programmatic dependent launch (``pdl``): each phase starts with
  ``griddepcontrol.wait`` (the previous phase's grid has finished and its stores are visible) and
  then releases the next launch, whose programs get scheduled while this phase runs. Phase p + 2
  reading phase p's output is safe too: phase p + 1 cannot finish before its own wait on p returned.
* ``"persistent"``: ONE cooperative launch of :func:`infer_persistent_kernel`; each program walks
  the schedule, takes work items ``pid, pid + P, ...`` of each phase, and waits at the grid barrier of
  ``_barrier.py`` between phases. Under the interpreter programs run one after another, so a
  spin barrier with more than one program would hang: there it runs only when the caller asks
  for a one-program grid (``programs=1``; it then checks the barrier and the schedule walk), and
  raises otherwise.

Tiles: :func:`pick_phase_plan`, one per phase: :func:`pick_infer_tiles`' for the whole call (documented
against the sm_90a compile report in :func:`pick_phase_tiles`, whose tiles it keeps except at small
batch), except that at throughput batches each phase of ``"phases"`` takes its own.

Split-K (``tiles.split_k = S > 1``; opt-in, ``pick_infer_tiles(..., split_k=True)``, fp16/bf16 up
to B = 256; the cost model predicts it slower, see there): a phase's work items are (output tile, K
slice) pairs, ``S`` per output tile, slice-major; each program stores its fp32 partial in the tile's
workspace slot, and the last of the ``S`` to arrive on the tile's counter sums them in slice order
and runs the epilogue (``_barrier.split_k_reduce``: no floating-point atomics, the same bits
whatever order the programs finish in). The workspace and counters are the call's (``_buffers``);
the counters return to zero at every use, so a captured graph replays on them (a call aborted
midway would leave some non-zero: :func:`clear_graphs` drops the graphs that hold them).

Cost of the LayerNorm fold: every COND_LN work item recomputes its rows' statistics, so each
``[BM, d]`` block of y is read twice more per column tile and K slice (two statistics passes, then
its slice of the normalised GEMM pass); the phase is one of 66 and its K is only d (folded, one of
45 with twice the work items: the cond tiles and the first step's, each computing the statistics).

Memory ordering in the persistent kernel: the barrier's release (after a ``bar.sync``, so the whole
program's stores precede it) and its acquire poll, broadcast to the program through ``bar.sync``,
are what make one program's stores visible to the next phase's readers; the operand loads of
``_blocks.matmul_tile`` are not marked to bypass L1, and the epilogue loads are plain loads. This
relies on the PTX memory model (an acquire at gpu scope orders the later weak loads of the CTA), as
cooperative groups' grid sync does; untested on a GPU.

Tensor descriptors (``tma=True``; opt-in, ``launch_options(tma=True)``; ``"phases"`` only; the GPU
run times it as ``fused:phases-tma``): every GEMM operand block (not the condition phase's
LayerNorm-folded ``y``) is loaded through descriptors the program makes over the job's whole
``X [B, K]`` and ``W [N, K]`` (``_blocks.matmul_slice_desc``), so on Hopper the blocks arrive by TMA
bulk copies into shared memory instead of per-thread ``cp.async`` with computed addresses and masks;
the descriptors' bounds zero-fill what the masks zero. It needs 16-byte-aligned rows and matrices,
inputs included (:func:`tma_problem`), and on CUDA a Triton allocator for the descriptors' global
scratch (:func:`_ensure_allocator` sets torch's where none is set). Descriptors are made after the
PDL wait, and the kernel boundary orders one phase's stores before the next phase's TMA reads. The
persistent kernel does not take it: with TMA loads it spilled 5 to 6 stores under triton 3.6.0 (the
GPU image's), and it would need a ``fence.proxy.async.global`` after each grid barrier. The bytes
moved are the same, so the cost model predicts the same time; what TMA changes (address arithmetic,
issue slots, two descriptor writes per work item) only a GPU can price. sm_90a, default model, zero
spills under triton 3.7.1 and 3.6.0 (the compile check covers bf16 B = 64 and 16384, fp32 B = 64):
B = 64 (32 x 32 x 64) the worst phase kind at 166 registers (the condition phase, whose
LayerNorm-folded loads stay pointers); B = 16384 the 128 x 256 phases at 255 as before. The
interpreter runs it (tests: the pointer loads' outputs within the fp32 summation order).

Not built: prefetching the next phase's weight tile before the barrier. The default model's weights
(about 15 MiB in bf16) stay in the H200's 60 MB L2, so an L2 prefetch (``cp.async.bulk.prefetch``)
would fetch nothing that is not there already. What a wait could hide is the first K block's L2
round trip per phase, and keeping that block across the barrier needs registers (a first iteration
peeled out of the compiler's pipelined K loop) or the pipeline's shared-memory buffers, which
Triton's pipeliner owns. The cost model has no per-phase pipeline-fill term, so it predicts no gain
either way; whether the fill shows is for the GPU run.
Nothing here has run on a GPU yet: the CUDA-graph, programmatic-launch and cooperative paths are
written and compiled for sm_90a, not executed.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import _blocks as blk
from . import _graphs
from ._barrier import grid_barrier, split_k_reduce
from ._heuristics import LATENCY_MAX_BATCH, Blocks, check_hidden, check_matrix, check_tables, check_vector, clamp_block, dot_mode
from ._launch import launch

# ----------------------------------------------------------------------------- schedule (host)

KIND_PROJ, KIND_COND_LN, KIND_COND_T, KIND_A, KIND_R, KIND_O, KIND_HEAD = range(7)
KIND_NAMES = ("PROJ", "COND_LN", "COND_T", "A", "R", "O", "HEAD")
# schedule row: kind, stage (0 Learner, 1 Translator), krow (row k-1 of the stage's e/ddim tables),
# layer (R: the residual layer, reading h[layer % 2]; O: L-1, so it reads the last h), main (run the
# phase's own job), side (run the riding PFIN job(s)), side_krow (e row of the riding P), flags
SCHED_COLS = 8
FLAG_STORE_X0 = 1   # O: also store x0_hat (the Translator's, read by PFIN)
FLAG_TO_S = 2       # O: write the updated x into s (the Learner's last step)
FLAG_FOLD = 4       # A: the folded form (u from the last h through W_x W_o; only where main = 1, k < K)
FLAG_RIDE_O = 16    # A (folded, Learner): the previous step's x update rides along (x0 from the last h)
FLAG_H1 = 32        # the step's first h buffer is h[1] (h[0] without the flag); see _phase


@dataclass(frozen=True)
class Phase:
    """One phase: ``kind`` (``KIND_*``), its schedule row, and its GEMM jobs as
    ``(name, N, K)`` (output width, reduction width; every job has B rows)."""
    kind: int
    row: tuple
    jobs: tuple

    @property
    def name(self) -> str:
        return "+".join(j[0] for j in self.jobs)


def build_schedule(d: int, H: int, C: int, Dv: int, layers: int, K1: int, K2: int,
                   fold: bool = False) -> list[Phase]:
    """The phase list of one inference call (see the module docstring); ``layers`` = L >= 1;
    ``fold``: the folded steps (module docstring, "Folded steps")."""
    nh = layers - 1
    out: list[Phase] = []

    def add(kind, jobs, stage=0, krow=0, layer=0, main=1, side=0, side_krow=0, flags=0):
        out.append(Phase(kind, (kind, stage, krow, layer, main, side, side_krow, flags), tuple(jobs)))

    add(KIND_PROJ, [("proj", d, Dv)])
    pfin_pg = [("P", H, 2 * d), ("G", d, 2 * d)]
    if not fold:
        add(KIND_COND_LN, [("cond_ln", H, d)])
        for step in range(K1):
            k = K1 - step  # DDIM step k, table row k - 1
            add(KIND_A, [("A", H, d)], stage=0, krow=k - 1)
            for layer in range(nh):
                add(KIND_R, [("R", H, H)], stage=0, krow=k - 1, layer=layer)
            add(KIND_O, [("O", d, H)], stage=0, krow=k - 1, layer=nh, flags=FLAG_TO_S if k == 1 else 0)
        add(KIND_COND_T, [("cond_t", H, d)], stage=1)
        for step in range(K2):
            k = K2 - step
            ride = step > 0  # PFIN of step k + 1 rides in this step's phases
            add(KIND_A, [("A", H, d)] + (pfin_pg if ride else []), stage=1, krow=k - 1, side=int(ride), side_krow=k)
            for layer in range(nh):
                d_here = ride and layer == 0
                add(KIND_R, [("R", H, H)] + ([("D", d, H)] if d_here else []), stage=1, krow=k - 1, layer=layer,
                    side=int(d_here))
            d_in_o = ride and nh == 0
            add(KIND_O, [("O", d, H)] + ([("D", d, H)] if d_in_o else []), stage=1, krow=k - 1, layer=nh,
                side=int(d_in_o), flags=FLAG_STORE_X0)
        add(KIND_A, pfin_pg, stage=1, main=0, side=1, side_krow=0)   # P(1) + G(1)
    else:
        pfin_fold = [("P", H, d + H), ("G", d, d + H)]

        def stage_steps(stage, K):
            """The stage's steps; -> (the last step's h flag, the flag a further step would take)."""
            hb = 0  # a step writes its first h into h[hb]; its last h is h[(hb + nh) % 2]
            for step in range(K):
                k, hf = K - step, FLAG_H1 * hb
                if step == 0:  # the first A rides in the stage's condition phase ("A0", side = 1)
                    kind, job = (KIND_COND_LN, "cond_ln") if stage == 0 else (KIND_COND_T, "cond_t")
                    add(kind, [(job, H, d), ("A0", H, d)], stage=stage, krow=k - 1, side=1, flags=hf)
                elif stage == 0:
                    add(KIND_A, [("AF", H, H), ("O", d, H)], stage=0, krow=k - 1, side_krow=k,
                        flags=FLAG_FOLD | FLAG_RIDE_O | hf)
                else:
                    add(KIND_A, [("AF", H, H)] + pfin_fold, stage=1, krow=k - 1, side=1, side_krow=k,
                        flags=FLAG_FOLD | hf)
                for layer in range(nh):
                    d_here = stage == 1 and step > 0 and layer == 0
                    add(KIND_R, [("R", H, H)] + ([("D", d, H)] if d_here else []), stage=stage, krow=k - 1,
                        layer=layer, side=int(d_here), flags=hf)
                if stage == 1 and step > 0 and nh == 0:  # L = 1: D(k + 1) gets a phase of its own
                    add(KIND_R, [("D", d, H)], stage=1, main=0, side=1)
                last, hb = hf, (hb + nh + 1) % 2
            return last, FLAG_H1 * hb

        last, _ = stage_steps(0, K1)
        add(KIND_O, [("O", d, H)], stage=0, krow=0, layer=nh, flags=FLAG_TO_S | last)  # s = x_0
        _, following = stage_steps(1, K2)
        add(KIND_A, pfin_fold, stage=1, main=0, side=1, side_krow=0, flags=following)  # P(1) + G(1)
    add(KIND_R, [("D", d, H)], stage=1, main=0, side=1)         # D(1)
    add(KIND_HEAD, [("head", C, d)])
    return out


def phase_count(layers: int, K1: int, K2: int, fold: bool = False) -> int:
    """Phases (= launches of ``impl="phases"``) per call: ``2 + K1 (L+1) + 1 + K2 (L+1) + 3``;
    folded, ``1 + K1 L + 1 + K2 L + 3`` (each stage's first A rides in its condition phase; plus
    ``K2 - 1`` PFIN updates of their own at L = 1)."""
    if not fold:
        return 6 + (K1 + K2) * (layers + 1)
    return 5 + (K1 + K2) * layers + (K2 - 1 if layers == 1 else 0)


def semantic_phase_count(layers: int, K1: int, fold: bool = False) -> int:
    """Phases of the schedule's prefix that ends with ``s`` (projector, LayerNorm, the Learner):
    ``2 + K1 (L+1)`` (folded: ``2 + K1 L``); ``infer_phases(..., semantic_only=True)`` runs only these."""
    return 2 + K1 * layers if fold else 2 + K1 * (layers + 1)


def use_fold(batch: int) -> bool:
    """Whether a call of ``batch`` rows runs the folded steps: at ``B <= 256`` (latency), where the
    cost model puts the 21 phases fewer (default model) ahead of the wider folded GEMMs; above, the
    extra FLOPs and L2 bytes lose (module docstring, "Folded steps")."""
    return batch <= LATENCY_MAX_BATCH


# ----------------------------------------------------------------------------- tiles (host)


PhaseTiles = Blocks  # a call's tiles: the same fields as the row-block kernels' (BM, BN, BK, warps, stages)


TARGET_TILES = 128  # tiles per H-wide phase the pickers aim at (about one wave on 132 SMs)
# fp16/bf16 throughput tiles, widest first (pick_phase_tiles takes the first that gives TARGET_TILES)
THROUGHPUT_TILES = (PhaseTiles(128, 256, 32, 8, 3, epi_parts=4), PhaseTiles(128, 128, 64, 8, 3),
                    PhaseTiles(128, 64, 32, 8, 2), PhaseTiles(64, 64, 32, 4, 2))


def pick_phase_tiles(batch: int, d: int, H: int, dtype: torch.dtype = torch.bfloat16,
                     impl: str = "phases") -> PhaseTiles:
    """Tile ``BM x BN x BK`` (and warps, stages) shared by every phase of a call.

    * fp32 (the parity path, IEEE FMA dots): ``16 x 32 x 32``, 4 warps, 2 stages, narrowed as below.
    * fp16/bf16, ``B <= 256`` (latency): ``BM = 16`` (the smallest ``tl.dot`` M; mma.sync), ``BK = 64``,
      and ``BN`` the widest of 64/32/16 that still gives an H-wide phase >= :data:`TARGET_TILES`
      tiles (B = 64, H = 1024: 4 row blocks x 32 column blocks of 32 = 128 tiles; B = 1: BN = 16, 64
      tiles; narrower than 16 is not a legal dot). The inference launcher picks its own tiles at
      these batches (:func:`pick_infer_tiles`); the training phases keep these.
    * fp16/bf16, ``B > 256`` (throughput, wgmma): the first of :data:`THROUGHPUT_TILES` that gives an
      H-wide phase >= :data:`TARGET_TILES` tiles (about one wave): ``128 x 256 x 32`` with 8 warps, 3
      stages and an epilogue split in 4 column parts (B >= 3969 at H = 1024), ``128 x 128 x 64``
      with 8 warps and 3 stages (B >= 1921), ``128 x 64 x 32`` with 8 warps (B >= 897), else
      ``64 x 64 x 32`` with 4 warps. The wider the tile, the fewer L2 -> SM bytes per FLOP (per
      output value a tile reads ``K (1/BM + 1/BN)`` operands); the cost model
      (``python -m seda_fast.tools.cost_phases``) puts the first of them that fills a wave at or
      within 2% of the fastest of these four at every batch from 257 to 16384 (B = 16384: 3.04 ms
      at 128 x 256, 3.86 at 128 x 128; B = 4096: 0.96 at 128 x 256, 1.05 at 128 x 128, 1.46 at
      128 x 64, 1.87 at 64 x 64). This is one tile for the whole call; the inference launcher's
      ``"phases"`` refines it phase by phase (:func:`pick_phase_plan`).
    * ``impl="persistent"``, fp16/bf16, ``B > 256``: ``64 x 64 x 32`` with 8 warps at every such
      batch. Its one kernel holds every phase body, and under triton 3.6.0 (the GPU image's) it
      spills at both tiles above: 64x64x32 (4 warps) 4 stores, 128x64x32 (8 warps) 2 stores, both at
      the 255-register cap. With 8 warps the 64x64 tile takes 223 registers and spills nothing.

    Against the sm_90a compile report (triton 3.7.1, default model d=512, H=1024, L=2, ptxas with
    ``maxnreg=255``; ``tests/ops/test_infer_phases.py`` compiles every config the inference launcher
    uses and requires zero spills; the 16x64x64 figures, a tile only the training phases use now,
    are from an earlier report; unfolded kernels, ``FOLD=False``: a folded call's are in
    :func:`pick_infer_tiles`). Registers, worst phase kind of ``infer_phase_kernel`` / the
    persistent kernel: bf16 16x16x64 110/214, 16x32x64 177/229, 16x64x64 135/188, 64x64x32 200/255,
    128x64x32 (8 warps) 189/255, 128x128x64 (8 warps, 3 stages; phase kernel only) 255 with 97 KiB of
    shared memory, 128x256x32 (8 warps, 3 stages, 4 epilogue parts; phase kernel only) 255 with
    73 KiB (both the same under triton 3.6.0); fp32 16x16x32 174/202, 16x32x32 212/247; no spills
    anywhere (the persistent kernel at 64x64x32 with 8 warps: 223 under triton 3.6.0, no spills).
    The 128 x 256 accumulator alone is 128 registers a thread: with the whole tile's epilogue (its
    loaded ``[BM, BN]`` tiles on top) four phase kinds spilled 5 to 181 stores; the epilogue now
    runs on column parts of the accumulator one after another (``_blocks.col_part``): 2 parts still
    spill 8 stores in R, 4 parts none. ``BK = 64`` at 128 x 256 spills 4 stores in COND_LN (its
    LayerNorm prologue holds a ``[BM, BK]`` fp32 slice). The head's tile is ``BN`` narrowed to the
    classes (:func:`head_block`; unnarrowed, 128 x 256 spills 23 stores there under triton 3.6.0).
    Rejected: 64x128x32 (4 warps) sits at the 255 cap in three phase kinds; 128x128x32 (8 warps)
    spills 131 stores in the persistent kernel; 64x128x64 spills 2 in the persistent kernel.

    ``BN``/``BK`` are clamped to the next power of two of the real widths (>= 16), like
    ``_heuristics.clamp_block``.
    """
    if dtype == torch.float32:
        BM, BN, BK, warps, stages = 16, 32, 32, 4, 2
    elif batch <= 256:
        BM, BN, BK, warps, stages = 16, 64, 64, 4, 2
    elif impl == "persistent":
        BM, BN, BK, warps, stages = 64, 64, 32, 8, 2
    else:
        cands = throughput_candidates(d, H)
        return next((t for t in cands if triton.cdiv(batch, t.BM) * triton.cdiv(H, t.BN) >= TARGET_TILES), cands[-1])
    BN = clamp_block(BN, max(d, H))
    BK = clamp_block(BK, max(d, H))
    if BM == 16:
        rows = triton.cdiv(batch, BM)
        while BN > 16 and rows * triton.cdiv(H, BN) < TARGET_TILES:
            BN //= 2
    return PhaseTiles(BM, BN, BK, warps, stages)


def throughput_candidates(d: int, H: int) -> tuple[PhaseTiles, ...]:
    """:data:`THROUGHPUT_TILES` with ``BN``/``BK`` clamped to the model's widths (a clamped ``BN``
    runs its epilogue in one part)."""
    wide = max(d, H)
    out = []
    for t in THROUGHPUT_TILES:
        BN = clamp_block(t.BN, wide)
        out.append(PhaseTiles(t.BM, BN, clamp_block(t.BK, wide), t.num_warps, t.num_stages,
                              epi_parts=t.epi_parts if BN == t.BN else 1))
    return tuple(out)


# fp16/bf16 latency tiles of the inference call (B <= 256): (largest batch, BM, BN), see pick_infer_tiles
LATENCY_TILES = ((16, 16, 16), (32, 16, 32), (64, 32, 32), (128, 32, 64), (256, 64, 64))
SPLIT_MAX = 8  # K slices per output tile at most (split-K, opt-in)


def pick_infer_tiles(batch: int, d: int, H: int, dtype: torch.dtype = torch.bfloat16,
                     impl: str = "phases", split_k: bool = False) -> PhaseTiles:
    """The inference call's tiles: :func:`pick_phase_tiles`'s, except fp16/bf16 at ``B <= 256``
    (latency).

    * Default: ``BM x BN`` from :data:`LATENCY_TILES` by batch (16x16 up to B = 16, 16x32 to 32,
      32x32 to 64, 32x64 to 128, 64x64 to 256), ``BK = 64``, 4 warps, 2 stages (the persistent
      kernel: 8 warps at 64 rows). At every batch from 1 to 256 this is the fastest of BM 16/32/64 x
      BN 16/32/64/128 under the cost model for the folded schedule these batches run
      (``python -m seda_fast.tools.cost_phases``, default model, bf16, the phases' time summed over
      the call; ``tests/tools/test_cost_phases.py`` holds it to that). Wider tiles read fewer bytes
      per output, narrower ones spread a phase over more SMs; the L2 terms decide: B = 64 32x32
      0.072 ms (16x32, :func:`pick_phase_tiles`'s: 0.096), B = 128 32x64 0.110 (16x64: 0.160),
      B = 256 64x64 0.150 (16x64: 0.317); from B = 129 to 160, 64x64 is 0.3 % ahead of 32x64.
    * ``split_k=True`` (opt-in: ``launch_options(split_k=True)``; the GPU run times it): ``BM`` =
      the batch rounded up to a power of two, 16 to 64 (B <= 64 is one row block, so each weight
      tile is read once per phase), ``BN`` 32 with one row block and 64 with several, and each
      output tile's K loop cut into ``split_k`` slices run by separate programs (the smallest power
      of two that gives an H-wide phase :data:`TARGET_TILES` work items, at most :data:`SPLIT_MAX`,
      slices no narrower than ``BK`` over K = d), summed in a fixed order by the last program to
      finish (``_barrier.split_k_reduce``; bitwise reproducible). It moves fewer bytes than 16-row
      blocks (B = 64, folded: 599 MiB from L2 into the SMs, against 902 with 16x32 and 610 with the
      default 32x32), but every split phase waits for two more L2 round trips (the arrival atomic,
      then the partials' reload) and one program's reload of the partials, which the cost model
      charges at its assumed L2 latency: it predicts split-K slower at every batch (B = 64: 0.200 ms
      a call graph-replayed, against 0.151) until a GPU measures that latency.

    fp32 (the parity path) and ``B > 256`` take :func:`pick_phase_tiles` (never split); the
    persistent kernel in fp32 with ``BK = 16`` (at 16x32x32 its folded A phase spilled 2 stores at the
    255-register cap under triton 3.7.1; 212 registers with ``BK = 16``).

    sm_90a compile report (default model, ``maxnreg=255``; ``tests/ops/test_infer_phases.py``
    compiles each of these and requires zero spills), registers of the worst phase kind of
    ``infer_phase_kernel`` (in bf16 the A phase of a folded call, ``FOLD=True``) /
    the persistent kernel, triton 3.7.1 (3.6.0 within 9), no spills under either: 16x16x64 124/242,
    16x32x64 201/254, 32x32x64 166/239, 32x64x64 203/255 (mma.sync), 64x64x64 254/252 (wgmma; the
    persistent kernel with 8 warps); split-K 16x32x64 in 4 slices 158/226, 64x32x64 in 4 246/254
    (the persistent kernel with 8 warps and ``BK = 32``: at ``BK = 64`` it spilled 2 stores once each
    stage's first step rode in its condition phase); fp32 16x16x32 182/178 and 16x32x32 228/217 (the
    persistent kernel at ``BK = 16``)."""
    if dtype == torch.float32 or batch > LATENCY_MAX_BATCH:
        tiles = pick_phase_tiles(batch, d, H, dtype, impl)
        if dtype == torch.float32 and impl == "persistent":  # BK 32 spills in the folded A (above)
            tiles = dataclasses.replace(tiles, BK=clamp_block(16, max(d, H)))
        return tiles
    BK = clamp_block(64, max(d, H))
    split = 1
    if not split_k:
        BM, BN = next((bm, bn) for top, bm, bn in LATENCY_TILES if batch <= top)
        BN = clamp_block(BN, max(d, H))
    else:
        BM = min(64, max(16, triton.next_power_of_2(batch)))
        rows = triton.cdiv(batch, BM)
        BN = clamp_block(32 if rows == 1 else 64, max(d, H))
        while split < SPLIT_MAX and rows * triton.cdiv(H, BN) * split < TARGET_TILES and d >= 2 * split * BK:
            split *= 2
    warps = 8 if impl == "persistent" and BM == 64 else 4
    if impl == "persistent" and split > 1 and BM == 64:  # BK 64 spills 2 stores there (the docstring)
        BK = clamp_block(32, max(d, H))
    return PhaseTiles(BM, BN, BK, warps, 2, split_k=split)


def head_block(tiles: PhaseTiles, C: int) -> int:
    """The head's column tile: ``BN`` narrowed to the classes (``C = 10``: 16), so a wide tile
    does not compute (and hold in registers) hundreds of empty logit columns."""
    return clamp_block(tiles.BN, C)


def job_block(name: str, n: int, tiles: PhaseTiles) -> int:
    """Column tile of job ``name`` (output width ``n``): ``BN``, the head's :func:`head_block`."""
    return head_block(tiles, n) if name == "head" else tiles.BN


def job_tiles(batch: int, n: int, tiles: PhaseTiles, name: str = "") -> int:
    """Output tiles of one job (``batch`` rows, ``n`` columns)."""
    return triton.cdiv(batch, tiles.BM) * triton.cdiv(n, job_block(name, n, tiles))


def phase_out_tiles(phase: Phase, batch: int, tiles: PhaseTiles) -> int:
    """Output tiles of ``phase`` (sum over its jobs): its split-K workspace slots."""
    return sum(job_tiles(batch, n, tiles, name) for name, n, _ in phase.jobs)


def phase_tiles(phase: Phase, batch: int, tiles: PhaseTiles) -> int:
    """Programs one launch of ``phase`` needs, as the kernel counts its work items: one per
    (output tile, K slice)."""
    return phase_out_tiles(phase, batch, tiles) * tiles.split_k


DEFAULT_SMS = 132  # the H200's (and the H100 SXM's) SMs: the plan's wave count where no CUDA device says


def link_cost(phase: Phase, batch: int, tiles: PhaseTiles, sms: int = DEFAULT_SMS) -> float:
    """What one SM's L2 link carries for ``phase`` on ``tiles``, in operand values: the waves of
    its tiles on ``sms`` SMs times the mean ``(BM + BN) K`` operand values a tile loads (jobs as
    :func:`build_schedule` lists them: a folded first step's ``A0`` without the start noise). The
    plan's yardstick (:func:`pick_phase_plan`): it is the cost model's per-SM L2 term up to a
    constant, the term that bounds the throughput phases."""
    n = values = 0
    for name, N, K in phase.jobs:
        bn = job_block(name, N, tiles)
        t = triton.cdiv(batch, tiles.BM) * triton.cdiv(N, bn)
        n, values = n + t, values + t * (tiles.BM + bn) * K
    return triton.cdiv(n, sms) * values / n


def pick_phase_plan(phases, batch: int, d: int, H: int, dtype: torch.dtype = torch.bfloat16,
                    impl: str = "phases", split_k: bool = False, sms: int = DEFAULT_SMS) -> tuple[PhaseTiles, ...]:
    """Each phase's tiles, in schedule order.

    * ``impl="phases"``, fp16/bf16, ``B > 256`` (throughput): per phase, the candidate of
      :func:`throughput_candidates` with the lowest :func:`link_cost` (the widest among those within
      0.1 % of it). One tile for every phase is the wrong size for some of them: at B = 4096 the
      128 x 256 tile that fills a wave for the H-wide phases gives a d-wide one (O, D, the projector)
      64 tiles on 132 SMs, and at B = 1024 the 128 x 64 tile gives the widest phase (A + P + G,
      2.5 H columns) two waves of small tiles where 128 x 256 fits it in one (80 tiles). Cost
      model, default model, bf16, the phases' time summed over the call: B = 768 0.332 -> 0.240 ms,
      1024 0.361 -> 0.316, 1536 0.508 -> 0.387, 4096 0.852 -> 0.770; from B = 6144 every phase but
      the head keeps 128 x 256 (from about B = 12288 the head too). Each launch is compiled for its own tile
      (``infer_phase_kernel`` per ``KIND`` and tile): the 26 (kind, tile) pairs the plan gives the
      default model from B = 257 to 16384 compile with zero spills (the compile check of
      ``tests/ops/test_infer_phases.py``; registers up to 255 at 128 x 128 and 128 x 256, as
      :func:`pick_phase_tiles` lists).
    * Otherwise :func:`pick_infer_tiles`' one tile for every phase: the latency tiles (chosen for
      the whole call), fp32 (the parity path), and the persistent kernel (one kernel, one tile).
    ``sms``: the device's SM count (:data:`DEFAULT_SMS` off CUDA, and in the cost model the
    ceilings')."""
    tiles = pick_infer_tiles(batch, d, H, dtype, impl, split_k)
    if impl != "phases" or dtype == torch.float32 or batch <= LATENCY_MAX_BATCH:
        return (tiles,) * len(phases)
    cands = throughput_candidates(d, H)
    plan = []
    for phase in phases:
        costs = [link_cost(phase, batch, t, sms) for t in cands]
        plan.append(next(t for t, c in zip(cands, costs) if c <= min(costs) * 1.001))
    return tuple(plan)


def device_sms(device: torch.device) -> int:
    """SMs of ``device`` (:data:`DEFAULT_SMS` off CUDA)."""
    if device.type != "cuda":
        return DEFAULT_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


# ----------------------------------------------------------------------------- device code


@triton.jit
def _tile(t, N, BM: tl.constexpr, BN: tl.constexpr):
    """Tile ``t`` of a ``[B, N]`` output -> (first row (int64), first column)."""
    ncols = tl.cdiv(N, BN)
    return (t // ncols).to(tl.int64) * BM, (t % ncols) * BN


@triton.jit
def _ln_stats(y_ptr, rows, d, eps, BM: tl.constexpr, BK: tl.constexpr):
    """Mean and 1/std (biased variance, two passes like torch) of ``BM`` rows of ``y [*, d]``."""
    offs_m = tl.arange(0, BM)
    total = tl.zeros((BM,), tl.float32)
    for k0 in range(0, d, BK):
        offs_k = k0 + tl.arange(0, BK)
        mask = (offs_m[:, None] < rows) & (offs_k[None, :] < d)
        total += tl.sum(tl.load(y_ptr + offs_m[:, None] * d + offs_k[None, :], mask=mask, other=0.0).to(tl.float32),
                        axis=1)
    mean = total / d
    sq = tl.zeros((BM,), tl.float32)
    for k0 in range(0, d, BK):
        offs_k = k0 + tl.arange(0, BK)
        mask = (offs_m[:, None] < rows) & (offs_k[None, :] < d)
        y = tl.load(y_ptr + offs_m[:, None] * d + offs_k[None, :], mask=mask, other=0.0).to(tl.float32)
        diff = tl.where(mask, y - mean[:, None], 0.0)
        sq += tl.sum(diff * diff, axis=1)
    return mean, 1.0 / tl.sqrt(sq / d + eps)


@triton.jit
def _ln_matmul_tile(acc, y_ptr, rows, mean, rstd, lnw_ptr, lnb_ptr, w_ptr, n0, N, d, k_lo, k_hi,
                    z_ptr, x_ptr, c0, write,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                    LOWP: tl.constexpr, PREC: tl.constexpr):
    """``acc += LN(y)[:, k_lo:k_hi] W[n0:n0+BN, k_lo:k_hi]^T`` with the LayerNorm applied to each K
    slice as it is loaded; when ``write`` the slices also go to ``z`` and ``x = c0 z`` (rows of this
    block, width d)."""
    offs_m = tl.arange(0, BM)
    offs_n = n0 + tl.arange(0, BN)
    for k0 in range(k_lo, k_hi, BK):
        offs_k = k0 + tl.arange(0, BK)
        mask = (offs_m[:, None] < rows) & (offs_k[None, :] < k_hi)
        y = tl.load(y_ptr + offs_m[:, None] * d + offs_k[None, :], mask=mask, other=0.0).to(tl.float32)
        zk = (y - mean[:, None]) * rstd[:, None] * blk.load_vec(lnw_ptr, k0, d, BK)[None, :] \
            + blk.load_vec(lnb_ptr, k0, d, BK)[None, :]
        zk = tl.where(mask, zk, 0.0).to(z_ptr.dtype.element_ty)  # the stored z, in the compute dtype
        if write:
            tl.store(z_ptr + offs_m[:, None] * d + offs_k[None, :], zk, mask=mask)
            tl.store(x_ptr + offs_m[:, None] * d + offs_k[None, :], (c0 * zk.to(tl.float32)).to(x_ptr.dtype.element_ty),
                     mask=mask)
        w = tl.load(w_ptr + offs_n[None, :] * d + offs_k[:, None],
                    mask=(offs_n[None, :] < N) & (offs_k[:, None] < k_hi), other=0.0)
        if LOWP:
            acc = tl.dot(zk.to(w.dtype), w, acc)
        else:
            acc = tl.dot(zk.to(tl.float32), w.to(tl.float32), acc, input_precision=PREC)
    return acc


@triton.jit
def _item(t, n_out, SPLIT: tl.constexpr):
    """Work item ``t`` of a phase with ``n_out`` output tiles -> (output tile, K slice); items are
    slice-major, ``t = s n_out + u``."""
    if SPLIT == 1:
        u = t
        s = 0
    else:
        u = t % n_out
        s = t // n_out
    return u, s


@triton.jit
def _k_slice(s, Kdim, SPLIT: tl.constexpr, BK: tl.constexpr):
    """Reduction range ``[k_lo, k_hi)`` of K slice ``s`` of ``Kdim``: slices of ``Kdim / SPLIT``
    rounded up to ``BK`` (a trailing slice may be empty: its partial is zero)."""
    if SPLIT == 1:
        k_lo = 0
        k_hi = Kdim
    else:
        ks = tl.cdiv(tl.cdiv(Kdim, SPLIT), BK) * BK
        k_lo = s * ks
        k_hi = tl.minimum(k_lo + ks, Kdim)
    return k_lo, k_hi


@triton.jit
def _slice_product(acc, x_ptr, x_stride, r0, B, w_ptr, n0, N, Kdim, k_lo, k_hi,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr,
                   TMA: tl.constexpr):
    """``acc += X[r0 : r0 + BM, k_lo:k_hi] W[n0 : n0 + BN, k_lo:k_hi]^T`` (``X [B, Kdim]``), the
    operands loaded through tensor descriptors (``TMA``) or masked pointers."""
    if TMA:
        acc = blk.matmul_slice_desc(acc, x_ptr, x_stride, r0, B, w_ptr, n0, N, Kdim, k_lo, k_hi, BM, BN, BK, LOWP,
                                    PREC)
    else:
        acc = blk.matmul_slice(acc, x_ptr + r0 * x_stride, x_stride, B - r0, w_ptr, n0, N, Kdim, k_lo, k_hi,
                               BM, BN, BK, LOWP, PREC)
    return acc


@triton.jit
def _gemm_item(u, s, tile, N, x_ptr, x_stride, w_ptr, Kdim, B, ws_ptr, cnt_ptr,
               SPLIT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
               LOWP: tl.constexpr, PREC: tl.constexpr, TMA: tl.constexpr):
    """Work item (slot ``u``, K slice ``s``) of a job ``[B, N] = X [B, Kdim] W^T``, on the job's
    output tile ``tile``: -> (first row, first column, the tile's fp32 sum, whether this program
    runs the epilogue) (``_barrier.split_k_reduce``)."""
    r0, n0 = _tile(tile, N, BM, BN)
    k_lo, k_hi = _k_slice(s, Kdim, SPLIT, BK)
    acc = _slice_product(tl.zeros((BM, BN), tl.float32), x_ptr, x_stride, r0, B, w_ptr, n0, N,
                         Kdim, k_lo, k_hi, BM, BN, BK, LOWP, PREC, TMA)
    acc, last = split_k_reduce(acc, ws_ptr, cnt_ptr, u, s, SPLIT, BM, BN)
    return r0, n0, acc, last


@triton.jit
def _gemm2_item(u, s, tile, N, x_ptr, w_ptr, Kdim, x2_ptr, w2_ptr, K2dim, B, ws_ptr, cnt_ptr,
                SPLIT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                LOWP: tl.constexpr, PREC: tl.constexpr, TMA: tl.constexpr):
    """:func:`_gemm_item` of ``[B, N] = X W^T + X2 W2^T``, ``X [B, Kdim]``, ``X2 [B, K2dim]`` (PFIN's
    projections of ``m`` and of ``x0_hat``, or of the last ``h`` when folded), K slice ``s`` of each."""
    r0, n0 = _tile(tile, N, BM, BN)
    k_lo, k_hi = _k_slice(s, Kdim, SPLIT, BK)
    acc = _slice_product(tl.zeros((BM, BN), tl.float32), x_ptr, Kdim, r0, B, w_ptr, n0, N, Kdim,
                         k_lo, k_hi, BM, BN, BK, LOWP, PREC, TMA)
    k_lo, k_hi = _k_slice(s, K2dim, SPLIT, BK)
    acc = _slice_product(acc, x2_ptr, K2dim, r0, B, w2_ptr, n0, N, K2dim, k_lo, k_hi,
                         BM, BN, BK, LOWP, PREC, TMA)
    acc, last = split_k_reduce(acc, ws_ptr, cnt_ptr, u, s, SPLIT, BM, BN)
    return r0, n0, acc, last


@triton.jit
def _store_plus_bias(acc, b_ptr, out_ptr, r0, n0, N, B, EPI: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """``out[r0 : r0 + BM, n0 : n0 + BN] = acc + b`` (``out [B, N]``), in ``EPI`` column parts."""
    BE: tl.constexpr = BN // EPI
    for part in tl.static_range(EPI):
        ne = n0 + part * BE
        val = blk.col_part(acc, part, EPI, BM, BN) + blk.load_vec(b_ptr, ne, N, BE)[None, :]
        blk.store_tile(out_ptr + r0 * N, N, B - r0, ne, N, val, BM, BE)


@triton.jit
def _x_update(acc, bo, x_ptr, x0_ptr, s_ptr, a_k, b_k, r0, n0, d, B, STORE_X0, TO_S,
              EPI: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """The DDIM update of one ``[BM, BN]`` tile of x: ``x0 = acc + b_o`` (``acc`` = h W_o), stored when
    ``STORE_X0``; ``x <- a_k x + b_k x0``, into s instead when ``TO_S``."""
    BE: tl.constexpr = BN // EPI
    for part in tl.static_range(EPI):
        ne = n0 + part * BE
        x0 = blk.col_part(acc, part, EPI, BM, BN) + blk.load_vec(bo, ne, d, BE)[None, :]
        if STORE_X0:
            blk.store_tile(x0_ptr + r0 * d, d, B - r0, ne, d, x0, BM, BE)
        xn = a_k * blk.load_tile(x_ptr + r0 * d, d, B - r0, ne, d, BM, BE) + b_k * x0
        if TO_S:
            blk.store_tile(s_ptr + r0 * d, d, B - r0, ne, d, xn, BM, BE)
        else:
            blk.store_tile(x_ptr + r0 * d, d, B - r0, ne, d, xn, BM, BE)


@triton.jit
def _start_epilogue(acc, b_ptr, e_ptr, u_ptr, h_ptr, r0, n0, H, B, EPI: tl.constexpr, BM: tl.constexpr,
                    BN: tl.constexpr):
    """A stage's first step, riding in its condition phase (folded calls): ``w = acc + b_c`` (``acc``
    = the start x and cond through the start weights), stored as the loop state, and
    ``h0 = SiLU(w + e_K)``."""
    BE: tl.constexpr = BN // EPI
    for part in tl.static_range(EPI):
        ne = n0 + part * BE
        w = blk.col_part(acc, part, EPI, BM, BN) + blk.load_vec(b_ptr, ne, H, BE)[None, :]
        blk.store_tile(u_ptr + r0 * H, H, B - r0, ne, H, w, BM, BE)
        w += blk.load_vec(e_ptr, ne, H, BE)[None, :]
        blk.store_tile(h_ptr + r0 * H, H, B - r0, ne, H, blk.silu(w), BM, BE)


@triton.jit
def _phase(KIND: tl.constexpr, row_ptr, pid, nprog,
           v_ptr, y_ptr, z_ptr, x_ptr, s_ptr, x0_ptr, cond_ptr, h_ptr, sp_ptr, g_ptr, logits_ptr, xi_ptr,
           wv_ptr, bv_ptr, lnw_ptr, lnb_ptr,
           wx1_ptr, wc1_ptr, bc1_ptr, wh1_ptr, bh1_ptr, wo1_ptr, bo1_ptr, e1_ptr, dd1_ptr,
           wx2_ptr, wc2_ptr, bc2_ptr, wh2_ptr, bh2_ptr, wo2_ptr, bo2_ptr, e2_ptr, dd2_ptr,
           wpm_ptr, wpu_ptr, bp_ptr, wpd_ptr, bpd_ptr, wgm_ptr, wgu_ptr, bg_ptr, whd_ptr, bhd_ptr,
           u_ptr, wxo1_ptr, bxo1_ptr, wxo2_ptr, bxo2_ptr, wpo_ptr, bpo_ptr, wgo_ptr, bgo_ptr,
           wcx1_ptr, wcx2_ptr, wxi2_ptr,
           ws_ptr, cnt_ptr, ln_eps, c0, c1, B, Dv, d, H, C,
           HAS_NOISE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
           LOWP: tl.constexpr, PREC: tl.constexpr, EPI: tl.constexpr, BNH: tl.constexpr, SPLIT: tl.constexpr,
           FOLD: tl.constexpr, TMA: tl.constexpr):
    """The work items ``pid, pid + nprog, ...`` of one phase (schedule row at ``row_ptr``): one per
    (output tile, K slice); a tile's epilogue runs in the program that completes its K sum
    (``_barrier.split_k_reduce``; every program when ``SPLIT == 1``)."""
    stage = tl.load(row_ptr + 1)
    krow = tl.load(row_ptr + 2)
    layer = tl.load(row_ptr + 3)
    main = tl.load(row_ptr + 4)
    side = tl.load(row_ptr + 5)
    side_krow = tl.load(row_ptr + 6)
    flags = tl.load(row_ptr + 7)
    # the stage's denoiser weights and tables
    if stage == 0:
        wx, wh, bh, wo, bo, e_tab, dd = wx1_ptr, wh1_ptr, bh1_ptr, wo1_ptr, bo1_ptr, e1_ptr, dd1_ptr
        wxo, bxo = wxo1_ptr, bxo1_ptr
    else:
        wx, wh, bh, wo, bo, e_tab, dd = wx2_ptr, wh2_ptr, bh2_ptr, wo2_ptr, bo2_ptr, e2_ptr, dd2_ptr
        wxo, bxo = wxo2_ptr, bxo2_ptr
    # h buffers: A writes h[hb] (hb = 1 with FLAG_H1); residual layer l reads h[(hb + l) % 2] and
    # writes the other; a folded A reads the previous step's last h from h[1 - hb]
    hb = (flags // 32) % 2
    h_a = h_ptr + hb.to(tl.int64) * B * H
    h_prev = h_ptr + (1 - hb).to(tl.int64) * B * H
    h_in = h_ptr + ((layer + hb) % 2).to(tl.int64) * B * H
    h_out = h_ptr + ((layer + hb + 1) % 2).to(tl.int64) * B * H
    BE: tl.constexpr = BN // EPI  # epilogue part width (EPI = 2: two halves, one after the other)
    if KIND == 0:  # PROJ: y = v W_v + b_v
        n_out = tl.cdiv(B, BM) * tl.cdiv(d, BN)
        for t in range(pid, n_out * SPLIT, nprog):
            u, s = _item(t, n_out, SPLIT)
            r0, n0, acc, last = _gemm_item(u, s, u, d, v_ptr, Dv, wv_ptr, Dv, B, ws_ptr, cnt_ptr,
                                           SPLIT, BM, BN, BK, LOWP, PREC, TMA)
            if last:
                _store_plus_bias(acc, bv_ptr, y_ptr, r0, n0, d, B, EPI, BM, BN)
    elif KIND == 1:  # COND_LN: cond = LN(y) W_c1 + b_a1; column block 0 writes z and x = c0 z
        # (+ folded, side: the Learner's first A, w = LN(y) (W_c1 + c0 W_x1)^T + b_a1, h0 = SiLU(w + e_K))
        n_c = tl.cdiv(B, BM) * tl.cdiv(H, BN)
        n_out = n_c
        if FOLD:
            n_out = n_c * (1 + side)
        for t in range(pid, n_out * SPLIT, nprog):
            u, s = _item(t, n_out, SPLIT)
            tile = u
            w_sel = wc1_ptr
            if FOLD:
                if u >= n_c:
                    tile = u - n_c
                    w_sel = wcx1_ptr
            r0, n0 = _tile(tile, H, BM, BN)
            k_lo, k_hi = _k_slice(s, d, SPLIT, BK)
            mean, rstd = _ln_stats(y_ptr + r0 * d, B - r0, d, ln_eps, BM, BK)
            acc = _ln_matmul_tile(tl.zeros((BM, BN), tl.float32), y_ptr + r0 * d, B - r0, mean, rstd,
                                  lnw_ptr, lnb_ptr, w_sel, n0, H, d, k_lo, k_hi, z_ptr + r0 * d, x_ptr + r0 * d, c0,
                                  (n0 == 0) & (u < n_c), BM, BN, BK, LOWP, PREC)
            acc, last = split_k_reduce(acc, ws_ptr, cnt_ptr, u, s, SPLIT, BM, BN)
            if last:
                if FOLD:
                    if u >= n_c:
                        _start_epilogue(acc, bc1_ptr, e_tab + krow * H, u_ptr, h_a, r0, n0, H, B, EPI, BM, BN)
                    else:
                        _store_plus_bias(acc, bc1_ptr, cond_ptr, r0, n0, H, B, EPI, BM, BN)
                else:
                    _store_plus_bias(acc, bc1_ptr, cond_ptr, r0, n0, H, B, EPI, BM, BN)
    elif KIND == 2:  # COND_T: cond = s W_c2 + b_a2; column block 0 writes x = c0 s + c1 xi
        # (+ folded, side: the Translator's first A, w = s (W_c2 + c0 W_x2)^T + xi (c1 W_x2)^T + b_a2,
        # h0 = SiLU(w + e_K); then no phase reads x)
        n_c = tl.cdiv(B, BM) * tl.cdiv(H, BN)
        n_out = n_c
        if FOLD:
            n_out = n_c * (1 + side)
        for t in range(pid, n_out * SPLIT, nprog):
            u, s = _item(t, n_out, SPLIT)
            start = False  # this item is the first A's
            if FOLD:
                start = u >= n_c
            if start:
                if HAS_NOISE:
                    r0, n0, acc, last = _gemm2_item(u, s, u - n_c, H, s_ptr, wcx2_ptr, d, xi_ptr, wxi2_ptr, d, B,
                                                    ws_ptr, cnt_ptr, SPLIT, BM, BN, BK, LOWP, PREC, TMA)
                else:
                    r0, n0, acc, last = _gemm_item(u, s, u - n_c, H, s_ptr, d, wcx2_ptr, d, B, ws_ptr, cnt_ptr,
                                                   SPLIT, BM, BN, BK, LOWP, PREC, TMA)
            else:
                r0, n0, acc, last = _gemm_item(u, s, u, H, s_ptr, d, wc2_ptr, d, B, ws_ptr, cnt_ptr,
                                               SPLIT, BM, BN, BK, LOWP, PREC, TMA)
            if last:
                if start:
                    _start_epilogue(acc, bc2_ptr, e_tab + krow * H, u_ptr, h_a, r0, n0, H, B, EPI, BM, BN)
                else:
                    _store_plus_bias(acc, bc2_ptr, cond_ptr, r0, n0, H, B, EPI, BM, BN)
                    if n0 == 0 and side == 0:
                        for j0 in range(0, d, BE):
                            xs = c0 * blk.load_tile(s_ptr + r0 * d, d, B - r0, j0, d, BM, BE)
                            if HAS_NOISE:
                                xs += c1 * blk.load_tile(xi_ptr + r0 * d, d, B - r0, j0, d, BM, BE)
                            blk.store_tile(x_ptr + r0 * d, d, B - r0, j0, d, xs, BM, BE)
    elif KIND == 3:  # A (+ P + G, or + O): h0 = SiLU(u + cond + e_k), u = x W_x (folded: w = u + cond carried)
        rows = tl.cdiv(B, BM)
        if FOLD:  # a folded call: every P, G reads x0_hat through the last h and the folded weights
            fold = (flags // 4) % 2 == 1        # (set on rows of steps k < K only: row k exists)
            fr = krow + fold.to(tl.int32)       # folded A: the DDIM row of the previous step (k + 1)
            a_k = tl.load(dd + 2 * fr)
            b_k = tl.load(dd + 2 * fr + 1)
            # every folded A with main = 1 is a folded step (a stage's first rides in its condition
            # phase): w <- a_{k+1} w + (1 - a_{k+1}) cond + b_{k+1} (h W_o + b_o) W_x^T (w = u + cond)
            a_x, a_w, a_k_dim = h_prev, wxo, H
            pu_x, pu_w, pu_b, gu_w, gu_b, ku = h_prev, wpo_ptr, bpo_ptr, wgo_ptr, bgo_ptr, H
            n_o = ((flags // 16) % 2) * rows * tl.cdiv(d, BN)
        else:
            a_x, a_w, a_k_dim = x_ptr, wx, d
            pu_x, pu_w, pu_b, gu_w, gu_b, ku = x0_ptr, wpu_ptr, bp_ptr, wgu_ptr, bg_ptr, d
            n_o = 0
        n_a = main * rows * tl.cdiv(H, BN)
        n_p = side * rows * tl.cdiv(H, BN)
        n_g = side * rows * tl.cdiv(d, BN)
        n_out = n_a + n_p + n_g + n_o
        for t in range(pid, n_out * SPLIT, nprog):
            u, s = _item(t, n_out, SPLIT)
            if u < n_a:
                r0, n0, acc, last = _gemm_item(u, s, u, H, a_x, a_k_dim, a_w, a_k_dim, B, ws_ptr, cnt_ptr,
                                               SPLIT, BM, BN, BK, LOWP, PREC, TMA)
                if last:
                    for part in tl.static_range(EPI):
                        ne = n0 + part * BE
                        a = blk.col_part(acc, part, EPI, BM, BN)
                        cnd = blk.load_tile(cond_ptr + r0 * H, H, B - r0, ne, H, BM, BE)
                        if FOLD:  # the loop state is w = u + cond (its own condition phase starts it)
                            a = a_k * blk.load_tile(u_ptr + r0 * H, H, B - r0, ne, H, BM, BE) \
                                + (1.0 - a_k) * cnd + b_k * (a + blk.load_vec(bxo, ne, H, BE)[None, :])
                            blk.store_tile(u_ptr + r0 * H, H, B - r0, ne, H, a, BM, BE)
                        else:
                            a += cnd
                        a += blk.load_vec(e_tab + krow * H, ne, H, BE)[None, :]
                        blk.store_tile(h_a + r0 * H, H, B - r0, ne, H, blk.silu(a), BM, BE)
            elif u < n_a + n_p:
                r0, n0, acc, last = _gemm2_item(u, s, u - n_a, H, z_ptr, wpm_ptr, d, pu_x, pu_w, ku, B, ws_ptr,
                                                cnt_ptr, SPLIT, BM, BN, BK, LOWP, PREC, TMA)
                if last:
                    for part in tl.static_range(EPI):
                        ne = n0 + part * BE
                        a = blk.col_part(acc, part, EPI, BM, BN) + blk.load_vec(pu_b, ne, H, BE)[None, :]
                        a += blk.load_vec(e2_ptr + side_krow * H, ne, H, BE)[None, :]
                        blk.store_tile(sp_ptr + r0 * H, H, B - r0, ne, H, blk.silu(a), BM, BE)
            elif u < n_a + n_p + n_g:
                r0, n0, acc, last = _gemm2_item(u, s, u - n_a - n_p, d, z_ptr, wgm_ptr, d, pu_x, gu_w, ku, B,
                                                ws_ptr, cnt_ptr, SPLIT, BM, BN, BK, LOWP, PREC, TMA)
                if last:
                    for part in tl.static_range(EPI):
                        ne = n0 + part * BE
                        a = blk.col_part(acc, part, EPI, BM, BN) + blk.load_vec(gu_b, ne, d, BE)[None, :]
                        blk.store_tile(g_ptr + r0 * d, d, B - r0, ne, d, tl.sigmoid(a), BM, BE)
            else:
                if FOLD:  # the previous step's x update (the Learner's folded steps: s needs x)
                    r0, n0, acc, last = _gemm_item(u, s, u - n_a - n_p - n_g, d, h_prev, H, wo, H, B, ws_ptr,
                                                   cnt_ptr, SPLIT, BM, BN, BK, LOWP, PREC, TMA)
                    if last:
                        _x_update(acc, bo, x_ptr, x0_ptr, s_ptr, a_k, b_k, r0, n0, d, B, False, False, EPI, BM, BN)
    elif KIND == 4 or KIND == 5:  # R (+ D) or O (+ D)
        if KIND == 4:
            n_main = main * tl.cdiv(B, BM) * tl.cdiv(H, BN)
        else:
            n_main = main * tl.cdiv(B, BM) * tl.cdiv(d, BN)
        n_d = side * tl.cdiv(B, BM) * tl.cdiv(d, BN)
        n_out = n_main + n_d
        for t in range(pid, n_out * SPLIT, nprog):
            u, s = _item(t, n_out, SPLIT)
            if u < n_main:
                if KIND == 4:  # h_out = h_in + SiLU(h_in W_l + b_l)
                    r0, n0, acc, last = _gemm_item(u, s, u, H, h_in, H, wh + layer * H * H, H, B, ws_ptr, cnt_ptr,
                                                   SPLIT, BM, BN, BK, LOWP, PREC, TMA)
                    if last:
                        for part in tl.static_range(EPI):
                            ne = n0 + part * BE
                            a = blk.col_part(acc, part, EPI, BM, BN) \
                                + blk.load_vec(bh + layer * H, ne, H, BE)[None, :]
                            res = blk.load_tile(h_in + r0 * H, H, B - r0, ne, H, BM, BE) + blk.silu(a)
                            blk.store_tile(h_out + r0 * H, H, B - r0, ne, H, res, BM, BE)
                else:  # x0 = h W_o + b_o ; x <- a_k x + b_k x0 (into s on the Learner's last step)
                    r0, n0, acc, last = _gemm_item(u, s, u, d, h_in, H, wo, H, B, ws_ptr, cnt_ptr,
                                                   SPLIT, BM, BN, BK, LOWP, PREC, TMA)
                    if last:
                        _x_update(acc, bo, x_ptr, x0_ptr, s_ptr, tl.load(dd + 2 * krow), tl.load(dd + 2 * krow + 1),
                                  r0, n0, d, B, (flags & 1) != 0, (flags & 2) != 0, EPI, BM, BN)
            else:  # D: m <- m + g (SiLU(p) W_pd + b_pd), in place (m lives in z's buffer)
                r0, n0, acc, last = _gemm_item(u, s, u - n_main, d, sp_ptr, H, wpd_ptr, H, B, ws_ptr, cnt_ptr,
                                               SPLIT, BM, BN, BK, LOWP, PREC, TMA)
                if last:
                    for part in tl.static_range(EPI):
                        ne = n0 + part * BE
                        a = blk.col_part(acc, part, EPI, BM, BN) + blk.load_vec(bpd_ptr, ne, d, BE)[None, :]
                        mm = blk.load_tile(z_ptr + r0 * d, d, B - r0, ne, d, BM, BE) \
                            + blk.load_tile(g_ptr + r0 * d, d, B - r0, ne, d, BM, BE) * a
                        blk.store_tile(z_ptr + r0 * d, d, B - r0, ne, d, mm, BM, BE)
    else:  # HEAD: logits = m W_h + b_h, in BM x BNH tiles (BNH: BN narrowed to the classes)
        n_out = tl.cdiv(B, BM) * tl.cdiv(C, BNH)
        for t in range(pid, n_out * SPLIT, nprog):
            u, s = _item(t, n_out, SPLIT)
            r0, n0, acc, last = _gemm_item(u, s, u, C, z_ptr, d, whd_ptr, d, B, ws_ptr, cnt_ptr,
                                           SPLIT, BM, BNH, BK, LOWP, PREC, TMA)
            if last:
                _store_plus_bias(acc, bhd_ptr, logits_ptr, r0, n0, C, B, 1, BM, BNH)


@triton.jit
def infer_phase_kernel(sched_ptr, phase,
                       v_ptr, y_ptr, z_ptr, x_ptr, s_ptr, x0_ptr, cond_ptr, h_ptr, sp_ptr, g_ptr, logits_ptr, xi_ptr,
                       wv_ptr, bv_ptr, lnw_ptr, lnb_ptr,
                       wx1_ptr, wc1_ptr, bc1_ptr, wh1_ptr, bh1_ptr, wo1_ptr, bo1_ptr, e1_ptr, dd1_ptr,
                       wx2_ptr, wc2_ptr, bc2_ptr, wh2_ptr, bh2_ptr, wo2_ptr, bo2_ptr, e2_ptr, dd2_ptr,
                       wpm_ptr, wpu_ptr, bp_ptr, wpd_ptr, bpd_ptr, wgm_ptr, wgu_ptr, bg_ptr, whd_ptr, bhd_ptr,
                       u_ptr, wxo1_ptr, bxo1_ptr, wxo2_ptr, bxo2_ptr, wpo_ptr, bpo_ptr, wgo_ptr, bgo_ptr,
                       wcx1_ptr, wcx2_ptr, wxi2_ptr,
                       ws_ptr, cnt_ptr, ln_eps, c0, c1, B, Dv, d, H, C,
                       KIND: tl.constexpr, HAS_NOISE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                       BK: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr, EPI: tl.constexpr, BNH: tl.constexpr,
                       SPLIT: tl.constexpr = 1, PDL: tl.constexpr = False, FOLD: tl.constexpr = False,
                       TMA: tl.constexpr = False):
    """Scheduler (b): one launch per phase, one program per work item (``KIND`` = the phase's kind).
    ``PDL`` (launched with ``launch_pdl=True``): wait for the previous launch's grid (its stores are
    visible after ``griddepcontrol.wait``), then let the next launch start its programs at once,
    so its launch overlaps this phase instead of following it."""
    if PDL:  # (first: with TMA the phase writes descriptors into scratch the previous launch may still read)
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    _phase(KIND, sched_ptr + phase * 8, tl.program_id(0), tl.num_programs(0),
           v_ptr, y_ptr, z_ptr, x_ptr, s_ptr, x0_ptr, cond_ptr, h_ptr, sp_ptr, g_ptr, logits_ptr, xi_ptr,
           wv_ptr, bv_ptr, lnw_ptr, lnb_ptr,
           wx1_ptr, wc1_ptr, bc1_ptr, wh1_ptr, bh1_ptr, wo1_ptr, bo1_ptr, e1_ptr, dd1_ptr,
           wx2_ptr, wc2_ptr, bc2_ptr, wh2_ptr, bh2_ptr, wo2_ptr, bo2_ptr, e2_ptr, dd2_ptr,
           wpm_ptr, wpu_ptr, bp_ptr, wpd_ptr, bpd_ptr, wgm_ptr, wgu_ptr, bg_ptr, whd_ptr, bhd_ptr,
           u_ptr, wxo1_ptr, bxo1_ptr, wxo2_ptr, bxo2_ptr, wpo_ptr, bpo_ptr, wgo_ptr, bgo_ptr,
           wcx1_ptr, wcx2_ptr, wxi2_ptr,
           ws_ptr, cnt_ptr, ln_eps, c0, c1, B, Dv, d, H, C, HAS_NOISE, BM, BN, BK, LOWP, PREC, EPI, BNH, SPLIT,
           FOLD, TMA)


@triton.jit
def infer_persistent_kernel(sched_ptr, n_phases, counter_ptr,
                            v_ptr, y_ptr, z_ptr, x_ptr, s_ptr, x0_ptr, cond_ptr, h_ptr, sp_ptr, g_ptr, logits_ptr,
                            xi_ptr, wv_ptr, bv_ptr, lnw_ptr, lnb_ptr,
                            wx1_ptr, wc1_ptr, bc1_ptr, wh1_ptr, bh1_ptr, wo1_ptr, bo1_ptr, e1_ptr, dd1_ptr,
                            wx2_ptr, wc2_ptr, bc2_ptr, wh2_ptr, bh2_ptr, wo2_ptr, bo2_ptr, e2_ptr, dd2_ptr,
                            wpm_ptr, wpu_ptr, bp_ptr, wpd_ptr, bpd_ptr, wgm_ptr, wgu_ptr, bg_ptr, whd_ptr, bhd_ptr,
                            u_ptr, wxo1_ptr, bxo1_ptr, wxo2_ptr, bxo2_ptr, wpo_ptr, bpo_ptr, wgo_ptr, bgo_ptr,
                            wcx1_ptr, wcx2_ptr, wxi2_ptr,
                            ws_ptr, cnt_ptr, ln_eps, c0, c1, B, Dv, d, H, C,
                            HAS_NOISE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                            BK: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr, EPI: tl.constexpr,
                            BNH: tl.constexpr, SPLIT: tl.constexpr = 1, FOLD: tl.constexpr = False):
    """Scheduler (a): every program walks the whole schedule; a grid barrier after every phase but
    the last (the host zeroes ``counter`` before the launch)."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    for p in range(n_phases):
        row = sched_ptr + p * 8
        kind = tl.load(row)
        for KIND in tl.static_range(7):  # one call site, unrolled: each copy gets its kind as a constant
            if kind == KIND:
                _phase(KIND, row, pid, nprog,
                       v_ptr, y_ptr, z_ptr, x_ptr, s_ptr, x0_ptr, cond_ptr, h_ptr, sp_ptr, g_ptr, logits_ptr, xi_ptr,
                       wv_ptr, bv_ptr, lnw_ptr, lnb_ptr,
                       wx1_ptr, wc1_ptr, bc1_ptr, wh1_ptr, bh1_ptr, wo1_ptr, bo1_ptr, e1_ptr, dd1_ptr,
                       wx2_ptr, wc2_ptr, bc2_ptr, wh2_ptr, bh2_ptr, wo2_ptr, bo2_ptr, e2_ptr, dd2_ptr,
                       wpm_ptr, wpu_ptr, bp_ptr, wpd_ptr, bpd_ptr, wgm_ptr, wgu_ptr, bg_ptr, whd_ptr, bhd_ptr,
                       u_ptr, wxo1_ptr, bxo1_ptr, wxo2_ptr, bxo2_ptr, wpo_ptr, bpo_ptr, wgo_ptr, bgo_ptr,
                       wcx1_ptr, wcx2_ptr, wxi2_ptr,
                       ws_ptr, cnt_ptr, ln_eps, c0, c1, B, Dv, d, H, C, HAS_NOISE, BM, BN, BK, LOWP, PREC, EPI, BNH,
                       SPLIT, FOLD, False)
        if p + 1 < n_phases:
            grid_barrier(counter_ptr, (p + 1) * nprog)


# ----------------------------------------------------------------------------- launcher

PROJ_KEYS = ("visual_proj.linear.weight", "visual_proj.linear.bias", "visual_proj.norm.weight",
             "visual_proj.norm.bias")
DEN_KEYS = ("in_x.weight", "in_c.weight", "in_c.bias", "out.weight", "out.bias")
PFIN_KEYS = ("pfin.p_m.weight", "pfin.p_u.weight", "pfin.p_u.bias", "pfin.down.weight", "pfin.down.bias",
             "pfin.g_m.weight", "pfin.g_u.weight", "pfin.g_u.bias")
HEAD_KEYS = ("head.weight", "head.bias")
IMPLS = ("phases", "persistent")

_SCHEDULES: dict = {}   # (d, H, C, Dv, L, K1, K2, fold, device) -> int32 [n_phases, 8] schedule table
_GRAPHS: dict = {}      # see _graph_call
MAX_GRAPHS = 8


def _schedule_table(dims, device, fold=False) -> torch.Tensor:
    """The whole call's schedule table (a ``semantic_only`` call launches a prefix of it)."""
    key = (dims["d"], dims["H"], dims["C"], dims["Dv"], dims["layers"], dims["K1"], dims["K2"], fold, device)
    table = _SCHEDULES.get(key)
    if table is None:
        phases = build_schedule(*key[:-1])
        table = torch.tensor([p.row for p in phases], dtype=torch.int32, device=device).contiguous()
        _SCHEDULES[key] = table
    return table


FOLD_KEYS = {"learner": ("wxo", "bxo"), "translator": ("wxo", "bxo", "wpo", "bpo", "wgo", "bgo")}
START_KEYS = {"learner": ("wcx",), "translator": ("wcx", "wxi")}  # the folded first steps' (after FOLD_KEYS)


def _check(visual, weights, tables, noise, fold=False, semantic_only=False):
    """Shapes/dtypes/devices of every input (ValueError naming the argument, before any launch);
    returns ``(dims, weight tuple)`` (with ``fold``, the folded weights of ``tables`` follow: the
    Learner's alone when ``semantic_only``)."""
    check_matrix("visual", visual, None, None, batch_rows=True)
    B, Dv = visual.shape
    dtype, device = visual.dtype, visual.device
    for key in PROJ_KEYS + PFIN_KEYS + HEAD_KEYS + tuple(f"{s}.{k}" for s in ("learner", "translator")
                                                         for k in DEN_KEYS):
        if key not in weights:
            raise ValueError(f"weights is missing {key!r}")
    wv, bv, lnw, lnb = (weights[k] for k in PROJ_KEYS)
    check_matrix("visual_proj.linear.weight", wv, None, Dv, dtype, device)
    d = wv.shape[0]
    for name, t in zip(PROJ_KEYS[1:], (bv, lnw, lnb)):
        check_vector(name, t, d, dtype, device)
    wx1 = weights["learner.in_x.weight"]
    check_matrix("learner.in_x.weight", wx1, None, d, dtype, device)
    H = wx1.shape[0]
    dens = []
    for stage in ("learner", "translator"):
        wx, wc, bc, wo, bo = (weights[f"{stage}.{k}"] for k in DEN_KEYS)
        for name, t, r, c in (("in_x.weight", wx, H, d), ("in_c.weight", wc, H, d), ("out.weight", wo, d, H)):
            check_matrix(f"{stage}.{name}", t, r, c, dtype, device)
        check_vector(f"{stage}.in_c.bias", bc, H, dtype, device)
        check_vector(f"{stage}.out.bias", bo, d, dtype, device)
        if stage not in tables:
            raise ValueError(f"tables is missing {stage!r}")
        tab = tables[stage]
        for key in ("e", "ddim", "wh", "bh"):
            if key not in tab:
                raise ValueError(f"tables[{stage!r}] is missing {key!r}")
        n_hidden = check_hidden(tab["wh"], tab["bh"], H, dtype, device)
        K = check_tables(tab["e"], tab["ddim"], H, device)
        dens.append((wx, wc, bc, tab["wh"], tab["bh"], wo, bo, tab["e"], tab["ddim"], n_hidden, K))
    if dens[0][9] != dens[1][9]:
        raise ValueError(f"tables: the learner has {dens[0][9]} residual layers, the translator {dens[1][9]}")
    pf = [weights[k] for k in PFIN_KEYS]
    for name, t, r, c in zip(PFIN_KEYS, pf, (H, H, None, d, None, d, d, None), (d, d, None, H, None, d, d, None)):
        if r is None:
            check_vector(name, t, d if name in ("pfin.down.bias", "pfin.g_u.bias") else H, dtype, device)
        else:
            check_matrix(name, t, r, c, dtype, device)
    whd, bhd = (weights[k] for k in HEAD_KEYS)
    check_matrix("head.weight", whd, None, d, dtype, device)
    C = whd.shape[0]
    check_vector("head.bias", bhd, C, dtype, device)
    if noise is not None:
        check_matrix("noise", noise, B, d, None, device, batch_rows=True)
    dims = dict(B=B, Dv=Dv, d=d, H=H, C=C, layers=dens[0][9] + 1, K1=dens[0][10], K2=dens[1][10])
    flat = (wv, bv, lnw, lnb) + dens[0][:7] + dens[0][7:9] + dens[1][:7] + dens[1][7:9] + tuple(pf) + (whd, bhd)
    if fold:
        shapes = {"wxo": (H, H), "bxo": (H,), "wpo": (H, H), "bpo": (H,), "wgo": (d, H), "bgo": (d,), "wcx": (H, d),
                  "wxi": (H, d)}
        stages = ("learner",) if semantic_only else ("learner", "translator")
        for stage in stages:
            for key in FOLD_KEYS[stage] + START_KEYS[stage]:
                if key not in tables[stage]:
                    raise ValueError(f"tables[{stage!r}] is missing {key!r} (the folded weights, "
                                     "seda_fast.ops.weights.inference_tables)")
                t, name = tables[stage][key], f"tables[{stage!r}][{key!r}]"
                if len(shapes[key]) == 2:
                    check_matrix(name, t, *shapes[key], dtype, device)
                else:
                    check_vector(name, t, shapes[key][0], dtype, device)
        # in the kernel's argument order: wxo1, bxo1, wxo2, bxo2, wpo, bpo, wgo, bgo, wcx1, wcx2, wxi2
        # (a semantic_only call's Translator entries: the first weight, never read)
        flat += tuple(tables[stage][k] if stage in stages else flat[0] for keys in (FOLD_KEYS, START_KEYS)
                      for stage in ("learner", "translator") for k in keys[stage])
    return dims, flat


N_FLAT = 32  # weights and tables of an unfolded call (``_check``'s flat tuple); the folded add N_FOLDED
N_FOLDED = 11


def _weight_args(flat):
    """Kernel argument order: wv, bv, lnw, lnb, (wx, wc, bc, wh, bh, wo, bo, e, dd) x 2, pfin x 8, head x 2,
    then (after the caller's u buffer) the folded wxo1, bxo1, wxo2, bxo2, wpo, bpo, wgo, bgo, wcx1, wcx2,
    wxi2. An empty residual stack (L = 1) and an unfolded call's folded weights are never read: any
    valid pointer stands in for them."""
    out = list(flat[:N_FLAT])
    for base in (4, 13):
        if out[base + 3].numel() == 0:
            out[base + 3], out[base + 4] = out[base + 5], out[base + 6]
    folded = list(flat[N_FLAT:])
    return out, folded + [out[0]] * (N_FOLDED - len(folded))


def _buffers(B, d, H, C, dtype, device, plan, phases, fold=False):
    """The call's activation buffers, and for split-K tiles (``split_k > 1`` in the phases' ``plan``)
    the fp32 partial-sum workspace ``[slots, split, BM, BN]`` and the int32 per-slot counters (zeroed here;
    every use leaves them at zero, so a captured graph reuses them); one-element stand-ins
    otherwise (never touched)."""
    e = lambda *shape: torch.empty(*shape, dtype=dtype, device=device)  # noqa: E731
    bufs = dict(y=e(B, d), z=e(B, d), x=e(B, d), s=e(B, d), x0=e(B, d), cond=e(B, H), h=e(2, B, H), sp=e(B, H),
                g=e(B, d), logits=e(B, C))
    # the folded steps' loop state w = x W_x + cond (fp32; a stand-in otherwise, never touched)
    bufs["u"] = torch.empty((B, H) if fold else (1,), dtype=torch.float32, device=device)
    if max(t.split_k for t in plan) > 1:
        slots = max(phase_out_tiles(p, B, t) for p, t in zip(phases, plan))
        size = max(t.split_k * t.BM * t.BN for t in plan)
        bufs["split_ws"] = torch.empty(slots * size, dtype=torch.float32, device=device)
        bufs["split_count"] = torch.zeros(slots, dtype=torch.int32, device=device)
    else:
        bufs["split_ws"] = torch.empty(1, dtype=torch.float32, device=device)
        bufs["split_count"] = torch.empty(1, dtype=torch.int32, device=device)
    return bufs


def _launch_all(impl, visual, xi, bufs, wargs, sched, phases, dims, ln_eps, c0, c1, plan, programs, pdl=False,
                fold=False):
    B, Dv, d, H, C = (dims[k] for k in ("B", "Dv", "d", "H", "C"))
    lowp, prec = dot_mode(visual.dtype, visual.device)
    has_noise = xi is not None
    acts = (visual, bufs["y"], bufs["z"], bufs["x"], bufs["s"], bufs["x0"], bufs["cond"], bufs["h"], bufs["sp"],
            bufs["g"], bufs["logits"], xi if has_noise else bufs["s"])
    wargs, folded = wargs
    wargs = (*wargs, bufs["u"], *folded)
    tail = (bufs["split_ws"], bufs["split_count"], float(ln_eps), float(c0), float(c1), B, Dv, d, H, C)
    meta = dict(HAS_NOISE=has_noise, LOWP=lowp, PREC=prec, FOLD=fold)

    def tiled(t):
        return dict(meta, BM=t.BM, BN=t.BN, BK=t.BK, EPI=t.epi_parts, BNH=head_block(t, C), SPLIT=t.split_k,
                    TMA=t.tma, num_warps=t.num_warps, num_stages=t.num_stages, maxnreg=t.maxnreg)
    if impl == "phases":
        meta["PDL"] = pdl
        if pdl:
            meta["launch_pdl"] = True
        for p, (phase, t) in enumerate(zip(phases, plan)):
            launch(infer_phase_kernel, (phase_tiles(phase, B, t),), sched, p, *acts, *wargs, *tail,
                   KIND=phase.kind, **tiled(t))
        return
    meta = tiled(plan[0])  # the persistent kernel: one tile for every phase, no TMA (infer_phases)
    del meta["TMA"]
    counter = bufs["counter"]
    counter.zero_()
    if visual.device.type == "cuda":
        meta["launch_cooperative_grid"] = True
    launch(infer_persistent_kernel, (programs,), sched, len(phases), counter, *acts, *wargs, *tail, **meta)


def persistent_programs(device: torch.device, max_tiles: int, ctas_per_sm: int = 1) -> int:
    """Grid of the persistent launch: no more programs than tiles of the widest phase, and no more
    than the device holds at once (``ctas_per_sm`` per SM: one is always co-resident for these
    kernels, 4 warps x 255 registers = half an SM's register file; the cooperative launch fails
    loudly if not)."""
    return max(1, min(max_tiles, device_sms(device) * ctas_per_sm))


def pdl_available(device: torch.device) -> bool:
    """Programmatic dependent launch: CUDA devices of compute capability 9.0 (Hopper) or newer."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0)


def infer_phases(visual, weights: dict, tables: dict, *, ln_eps: float, start_c0: float, start_c1: float,
                 noise=None, impl: str = "phases", programs: int | None = None, graph: bool = False,
                 tiles=None, pdl: bool | None = None, semantic_only: bool = False,
                 split_k: bool = False, fold: bool | None = None, tma: bool = False):
    """The inference chain as a phase schedule: ``visual [B, Dv] -> (logits [B, C], s [B, d], m [B, d])``;
    with ``semantic_only`` only the schedule's first :func:`semantic_phase_count` phases run and the
    result is ``(z [B, d], s [B, d])`` (the projected visual feature and the Learner's sample).

    ``weights``: the model's parameters by dotted name (``visual_proj.linear.weight``,
    ``learner.in_x.weight``, ..., ``pfin.down.bias``, ``head.weight``; the residual layers come from
    ``tables``), all in ``visual``'s dtype and on its device. ``tables``: ``{"learner": {...},
    "translator": {...}}`` each with ``e [K, H]`` fp32 (row k-1 = e(tau_k)), ``ddim [K, 2]`` fp32,
    ``wh [L-1, H, H]``, ``bh [L-1, H]`` (``seda_fast.fused.prepared``'s layout). ``start_c0/c1``:
    ``sqrt(abar_T)``, ``sqrt(1 - abar_T)``. ``noise``: the Translator's start noise ``[B, d]``
    (``None`` = zeros), cast to the compute dtype like the reference.

    ``impl``: ``"phases"`` (one launch per phase; ``graph=True`` on CUDA replays a cached CUDA graph
    of the whole call) or ``"persistent"`` (one cooperative launch; CUDA, or the interpreter with
    ``programs=1`` only). ``graph=True`` is ignored off CUDA. Tiles: :func:`pick_phase_plan`, one per
    phase; ``tiles`` overrides it with one :class:`PhaseTiles` for every phase or a sequence of one per
    phase of the whole call's schedule (tests, compile report; the persistent kernel takes one);
    ``split_k=True`` picks split-K tiles (:func:`pick_infer_tiles`; the GPU run's comparison).
    ``pdl``: launch ``impl="phases"`` with programmatic dependent launch (``None``: where
    :func:`pdl_available`; ``True`` off such a device raises). ``fold``: run the folded steps
    (``None``: :func:`use_fold`); they need the folded weights in ``tables`` (``"wxo"``, ``"bxo"``,
    ``"wcx"`` per stage, ``"wpo"``, ``"bpo"``, ``"wgo"``, ``"bgo"``, ``"wxi"`` in the translator's;
    ``seda_fast.ops.weights.inference_tables`` makes them), and the start weights ``wcx``, ``wxi``
    made with this call's ``start_c0``, ``start_c1`` (``folded_start``; nothing checks that).
    ``tma=True`` loads every GEMM operand (not the LayerNorm-folded condition phase's ``y``) through
    tensor descriptors made in the kernel (TMA on Hopper; the module docstring, "Tensor
    descriptors"); it needs 16-byte-aligned rows and tensors (:func:`tma_problem`, a ValueError
    otherwise). Outputs are in the compute dtype (new tensors, also on graph replay).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if graph and impl != "phases":
        raise ValueError("graph=True captures impl='phases' only (the persistent call is already one launch)")
    if fold is None:
        fold = use_fold(visual.shape[0]) if visual.dim() == 2 else False
    dims, flat = _check(visual, weights, tables, noise, fold, semantic_only)
    dtype, device = visual.dtype, visual.device
    if pdl is None:
        pdl = impl == "phases" and pdl_available(device)
    elif pdl and (impl != "phases" or not pdl_available(device)):
        raise ValueError("pdl=True needs impl='phases' on a CUDA device of compute capability 9.0 or newer "
                         f"(got impl={impl!r} on {device})")
    if noise is not None and noise.dtype != dtype:
        noise = noise.to(dtype)
    B, d, H, C = dims["B"], dims["d"], dims["H"], dims["C"]
    phases = build_schedule(d, H, C, dims["Dv"], dims["layers"], dims["K1"], dims["K2"], fold)
    if tiles is None:
        plan = _plan(B, d, H, C, dims["Dv"], dims["layers"], dims["K1"], dims["K2"], fold, dtype, impl, split_k,
                     device_sms(device))
    elif isinstance(tiles, PhaseTiles):
        plan = (tiles,) * len(phases)
    else:
        plan = tuple(tiles)
        if len(plan) != len(phases) or not all(isinstance(t, PhaseTiles) for t in plan):
            raise ValueError(f"tiles must be one PhaseTiles or a sequence of {len(phases)} (one per phase of the "
                             f"call's schedule), got {len(plan)} items")
        if impl == "persistent" and len(set(plan)) > 1:
            raise ValueError("impl='persistent' runs every phase in one kernel: tiles must be one PhaseTiles")
    tma = tma or any(t.tma for t in plan)  # (asked for, or given in tiles)
    if tma and impl != "phases":
        raise ValueError("tma=True runs with impl='phases' only (the persistent kernel with TMA loads spills "
                         "registers under triton 3.6.0)")
    if tma:
        problem = tma_problem(visual, flat, dims, noise)
        if problem:
            raise ValueError(f"tma=True loads the operands through tensor descriptors, which need 16-byte-aligned "
                             f"rows and tensors: {problem}")
        plan = tuple(dataclasses.replace(t, tma=True) for t in plan)
        if device.type == "cuda":
            _ensure_allocator()
    if semantic_only:
        n = semantic_phase_count(dims["layers"], dims["K1"], fold)
        phases, plan = phases[:n], plan[:n]
    if impl == "persistent":
        widest = max(phase_tiles(p, B, plan[0]) for p in phases)
        if device.type != "cuda":
            if programs != 1:
                raise RuntimeError(
                    "impl='persistent' spins on a grid barrier, and under the Triton interpreter programs run one "
                    "after another, so a grid of more than one program would hang: it needs a CUDA device. "
                    "Pass programs=1 to run its one-program grid here (a check of the schedule walk and the "
                    "barrier code), or use impl='phases'")
        elif programs is None:
            programs = persistent_programs(device, widest)
        elif programs > persistent_programs(device, programs):
            raise ValueError(f"programs={programs} exceeds what the device holds at once")
    if graph and device.type == "cuda" and impl == "phases":
        names = ("z", "s") if semantic_only else ("logits", "s", "z")
        return _graph_call(visual, noise, flat, phases, dims, ln_eps, start_c0, start_c1, plan, pdl, names, fold)
    sched = _schedule_table(dims, device, fold)
    bufs = _buffers(B, d, H, C, dtype, device, plan, phases, fold)
    if impl == "persistent":
        bufs["counter"] = torch.zeros(1, dtype=torch.int32, device=device)
    _launch_all(impl, visual.contiguous(), None if noise is None else noise.contiguous(), bufs, _weight_args(flat),
                sched, phases, dims, ln_eps, start_c0, start_c1, plan, programs, pdl, fold)
    return (bufs["z"], bufs["s"]) if semantic_only else (bufs["logits"], bufs["s"], bufs["z"])


def tma_problem(visual, flat, dims, noise=None) -> str | None:
    """Why the call's GEMM operands cannot be loaded through tensor descriptors (every row stride and
    every matrix's start 16-byte aligned: the inputs ``visual`` and ``noise``, the weights ``flat``),
    or ``None``."""
    size = visual.element_size()
    for name in ("Dv", "d", "H"):
        if dims[name] * size % 16:
            return f"{name} = {dims[name]} is not a multiple of {16 // size} ({visual.dtype} rows)"
    named = [("input visual", visual)] + ([("input noise", noise)] if noise is not None else [])
    for what, t in named + [("weight", t) for t in flat]:
        if t.dim() >= 2 and t.data_ptr() % 16:
            return f"the {tuple(t.shape)} {what} does not start on a 16-byte boundary"
    return None


def _ensure_allocator() -> None:
    """Descriptors made in a kernel live in global scratch that Triton asks an allocator for at each
    launch; where none is set, torch's caching allocator (the current stream's: a CUDA-graph capture
    keeps the scratch in the graph's pool; its blocks are 512-byte aligned, Triton asks for 128).
    Triton's allocator is the process's (per thread): it then serves every Triton kernel that asks."""
    try:
        from triton.runtime._allocation import NullAllocator, _allocator
        unset = isinstance(_allocator.get(), NullAllocator)
    except ImportError:  # (private names, present in triton 3.6.0 and 3.7.1): set ours
        unset = True
    if unset:
        triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device="cuda"))


@functools.lru_cache(maxsize=64)
def _plan(B, d, H, C, Dv, layers, K1, K2, fold, dtype, impl, split_k, sms):
    """:func:`pick_phase_plan` of the call's whole schedule, once per shape (not per call)."""
    return pick_phase_plan(build_schedule(d, H, C, Dv, layers, K1, K2, fold), B, d, H, dtype, impl, split_k, sms)


def _graph_call(visual, noise, flat, phases, dims, ln_eps, c0, c1, plan, pdl, names, fold):
    """CUDA only: the whole ``"phases"`` call captured once per (batch, dtype, device, noise or not,
    the phases' tiles, and the address of every weight and table) and replayed. New weight/table tensors (e.g.
    ``fused.prepared`` rebuilt after a weight change, or the folded weights, which
    ``seda_fast.ops.weights.folded`` remakes after any in-place update of their sources) have new
    addresses, so they capture a new graph; an in-place update of a weight the kernels read directly
    is read by the replay as it is (the caller's ``tables`` must be current: folded weights made
    before an update are stale). Inputs are copied into the
    graph's static buffers and the buffers ``names`` cloned out of them (returned in that order)."""
    B, d, H, C = dims["B"], dims["d"], dims["H"], dims["C"]
    dtype, device = visual.dtype, visual.device
    pdl = pdl and not _graphs.pdl_capture_failed()
    key_of = lambda pdl_: (B, dtype, device, noise is None, plan, pdl_, fold, len(phases), ln_eps, c0, c1,  # noqa: E731
                           tuple(t.data_ptr() for t in flat), tuple(tuple(t.shape) for t in flat))
    key = key_of(pdl)
    entry = _GRAPHS.get(key)
    if entry is None:
        sched = _schedule_table(dims, device, fold)
        static_v = torch.empty_like(visual)
        static_xi = None if noise is None else torch.empty_like(noise)
        bufs = _buffers(B, d, H, C, dtype, device, plan, phases, fold)
        wargs = _weight_args(flat)

        def run(pdl_):
            _launch_all("phases", static_v, static_xi, bufs, wargs, sched, phases, dims, ln_eps, c0, c1, plan, None,
                        pdl_, fold)

        static_v.copy_(visual)
        if static_xi is not None:
            static_xi.copy_(noise)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            run(pdl)  # compiles every kernel outside the capture
        torch.cuda.current_stream(device).wait_stream(side)
        g, used = _graphs.capture(run, device, pdl, "infer_phases")
        key = key_of(used)  # a capture that fell back to plain launches is keyed as one
        if len(_GRAPHS) >= MAX_GRAPHS:
            _GRAPHS.pop(next(iter(_GRAPHS)))
        entry = _GRAPHS[key] = (g, static_v, static_xi, bufs, flat)  # flat: keeps the captured tensors alive
    g, static_v, static_xi, bufs, _ = entry
    static_v.copy_(visual)
    if static_xi is not None:
        static_xi.copy_(noise)
    g.replay()
    return tuple(bufs[n].clone() for n in names)


def clear_graphs() -> None:
    """Drop every cached CUDA graph of :func:`infer_phases`."""
    _GRAPHS.clear()
