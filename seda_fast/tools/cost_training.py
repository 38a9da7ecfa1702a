"""Predicted time of one training step (loss + backward, no optimizer) per stage: eager,
``torch.compile``, the fused training paths the library ships, and the phase design of the
fused training (every matmul of the step a GEMM over all SMs, the element-wise work in its
epilogue) under each activation policy.

Counts, not totals. :func:`step_ops` runs the eager step (:func:`seda_fast.reference.learner_loss` /
``translator_loss``, then ``backward``) on the meta device and records every aten op
(:func:`seda_fast.tools.cost_baselines.record_aten_ops`): its bytes, a matmul's ``(M, N, K)``, and
its *depth*, the number of matmuls on the longest data chain leading to it. The model is the
parameters' dtype (bf16 stands in for autocast: autocast's per-use weight casts are left out,
which flatters eager and compile).

* ``eager`` / ``torch_compile``: :func:`seda_fast.tools.cost_baselines.predict_ops` on the step's
  ops (the same rules as for inference: eager host-bound at ``aten_op_s`` per op, compile as one
  kernel per matmul plus one fused epilogue pass, each a graph boundary).
* ``rowblock`` / ``rowblock-graph``: the row-block training ops (:func:`predict_rowblock`), issued
  op by op from Python or captured whole in one CUDA graph.
* ``unroll-phases-save`` / ``unroll-phases-recompute`` (each also ``-graph``): what the library
  ships by default (``fused_impl="phases"``), stage 2 with the unroll, the random-t diffusion term
  and the Learner's sample run as phases, stage 1 with its diffusion term as phases (no unroll: one
  policy, ``-save``; the center constraint's ``dL/da`` joins the term's backward phases): their matmuls
  (:func:`unroll_shapes`, :func:`denoise_shapes`, :func:`semantic_shapes`; Counter-matched, so the
  few input gradients autograd skips for the first step are matched elsewhere) leave the step's,
  the phases are costed from the kernels' own schedules, jobs and tiles
  (:func:`unroll_phase_costs`, :func:`denoise_phase_costs`, :func:`semantic_phase_costs`), and the
  matmuls left, the glue's, as torch's (the eager baseline's roofline of FLOPs and HBM bytes).
* ``phases-save`` / ``phases-recompute`` (the design of a whole phase step, built only for the
  unroll): the matmuls grouped by depth, one *phase* per depth
  (every matmul of a depth has its inputs ready once the previous depth is done, so they ride
  together); a phase's jobs are tiled by the inference launcher's picker
  (:func:`kernels.infer_phases.pick_phase_tiles` on the job's M rows) and costed like an inference
  phase (:func:`seda_fast.tools.cost_phases.phase_terms`). A job with fewer tiles than SMs and a
  long reduction (a weight gradient, reducing over the batch) is split over K into
  ``min(sms / tiles, K / 128)`` parts whose fp32 partials are reduced in a fixed order (their
  bytes are added to its L2 traffic; the reduction is assumed to ride in the next phase). Element-
  wise work, reductions (LayerNorm, cross-entropy, bias sums) and the time-embedding MLP are assumed
  fused into the GEMMs' prologues and epilogues (one extra tile read per job). Sync: one
  programmatic-launch graph boundary per phase, plus one launch for the step's graph replay.
  HBM: every weight read once per use, every fp32 weight gradient written once, and, when the
  saved activations exceed the L2
  (:data:`seda_fast.tools.cost_phases.L2_BYTES`), every operand and output of every job.
  * ``save``: the backward reads every per-step activation the forward stored (as eager autograd
    does; the saved bytes are autograd's, counted with ``saved_tensors_hooks``).
  * ``recompute`` (stage 2): the unroll keeps only each step's ``x_k`` and ``m_k`` (``2 d`` values a
    row per step) and the backward runs each step's forward again: the per-step forward matmuls
    (the difference of two recordings, ``K2`` and ``K2 - 1`` steps) are added ``K2`` times as
    phases of their own (conservative: they could ride in the backward's phases). Stage 1 has no
    loop, so both policies are the same there.

What the model leaves out: the optimizer step, tail effects inside a wave, and the torch glue's
element-wise GPU work (its kernel boundaries are counted).
"""
from __future__ import annotations

import math
import weakref
from collections import Counter
from dataclasses import dataclass, replace

from ..config import SeDAConfig
from .cost_baselines import AtenOp, _kernel_s, host_s, predict_ops, record_aten_ops
from .cost_model import H200, Ceilings, Prediction, _DTYPE_BYTES
from .cost_phases import L2_BYTES, job_counts, phase_terms

STAGES = (1, 2)
BATCHES = (256, 4096)
POLICIES = ("save", "recompute")
SHIPPED = ("rowblock",) + tuple(f"unroll-phases-{p}" for p in POLICIES)  # the fused training paths of today
# "" issued from Python (the phase ranges replayed as CUDA graphs once they recur), "-raw" issued one
# Python launch per phase (launch_options(graph=False)), "-graph" the whole step captured in one graph
IMPLS = ("eager", "torch_compile") + tuple(i + g for i in SHIPPED for g in ("", "-raw", "-graph")
                                           if not (g == "-raw" and i == "rowblock")) \
    + tuple(f"phases-{p}" for p in POLICIES)
SPLIT_MIN_K = 128  # a split-K part reduces at least this many rows


@dataclass(frozen=True)
class StepRecord:
    """One recorded training step: its aten ops (forward then backward; ``n_forward`` of them are
    the forward's) and the bytes autograd saved for the backward (parameters excluded)."""
    ops: list
    n_forward: int
    saved_bytes: int


def step_ops(cfg: SeDAConfig, batch: int, stage: int, dtype: str = "bfloat16") -> StepRecord:
    """Record one eager training step of ``stage`` (loss + backward) at ``batch`` on the meta device."""
    import torch

    from .. import reference
    from ..model import SeDA
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    torch_dtype = getattr(torch, dtype)
    with torch.device("meta"):
        model = SeDA(cfg, backend="eager").to(torch_dtype).train()
        visual = torch.empty(batch, cfg.visual_dim, dtype=torch_dtype)
        text = torch.empty(cfg.num_classes, cfg.text_dim, dtype=torch_dtype)
        labels = torch.zeros(batch, dtype=torch.long)
    model.set_stage(stage)
    params = {id(p) for p in model.parameters()}
    live: set = set()  # ids of the saved tensors alive now (a dead tensor's id may be reused)
    saved = [0]

    def pack(t):
        base = t._base if t._base is not None else t
        if id(t) not in params and id(base) not in params and id(t) not in live:
            live.add(id(t))
            weakref.finalize(t, live.discard, id(t))
            saved[0] += t.numel() * t.element_size()
        return t

    state = {}

    def forward():
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            if stage == 1:
                state["loss"] = reference.learner_loss(model, visual, labels)[0]
            else:
                state["loss"] = reference.translator_loss(model, visual, labels, text, True)[0]

    fwd = record_aten_ops(forward)
    bwd = record_aten_ops(lambda: state["loss"].backward())
    top = max((o.depth for o in fwd), default=0)  # the backward's chains start where the forward's end
    bwd = [replace(o, depth=o.depth + top) for o in bwd]
    return StepRecord(fwd + bwd, len(fwd), saved[0])


def _matmuls(ops) -> list[AtenOp]:
    return [o for o in ops if o.mnk]


def per_step_forward(cfg: SeDAConfig, batch: int, dtype: str = "bfloat16") -> tuple[list[tuple], int]:
    """One step of the stage-2 unroll's forward: its matmuls as ``(relative depth, (M, N, K))`` and
    the bytes autograd saves for it (a recording at ``K2`` minus one at ``K2 - 1`` steps; the
    time-embedding MLP over the ``[K2, d]`` table also changes shape with ``K2`` and is left out)."""
    K2 = cfg.translator_steps
    if K2 < 2:
        raise ValueError("the per-step difference needs translator_steps >= 2")
    full = step_ops(cfg, batch, 2, dtype)
    less = step_ops(replace(cfg, translator_steps=K2 - 1), batch, 2, dtype)
    extra = Counter(o.mnk for o in _matmuls(full.ops[:full.n_forward]))
    extra.subtract(Counter(o.mnk for o in _matmuls(less.ops[:less.n_forward])))
    # the step's chain: the extra matmuls in the full recording's last unroll step, by their depth
    shapes = Counter({mnk: n for mnk, n in extra.items() if n > 0 and mnk[0] == batch})  # not the [K2, *] table MLP
    jobs, need = [], Counter(shapes)
    for o in reversed(_matmuls(full.ops[:full.n_forward])):
        if need[o.mnk] > 0:
            need[o.mnk] -= 1
            jobs.append((o.depth, o.mnk))
        if not +need:
            break
    low = min(dep for dep, _ in jobs)
    return [(dep - low, mnk) for dep, mnk in reversed(jobs)], full.saved_bytes - less.saved_bytes


@dataclass(frozen=True)
class Phase:
    jobs: tuple         # (M, N, K) of each GEMM in the phase


def phases_of(ops) -> list[Phase]:
    """The matmuls of ``ops`` grouped by depth, in order of depth."""
    by_depth: dict[int, list] = {}
    for o in _matmuls(ops):
        by_depth.setdefault(o.depth, []).append(o.mnk)
    return [Phase(tuple(by_depth[k])) for k in sorted(by_depth)]


def _phase_cost(phase: Phase, batch: int, dtype: str, cfg: SeDAConfig, ceilings: Ceilings,
                activations_in_hbm: bool):
    import torch

    from ..ops.runtime import kernels
    ip = kernels().infer_phases_module
    e = _DTYPE_BYTES[dtype]
    n_tiles, flops, l2, hbm = 0, 0.0, 0.0, 0.0
    for M, N, K in phase.jobs:
        tiles = ip.pick_phase_tiles(M, cfg.dim, cfg.hidden, getattr(torch, dtype))
        t, f, b = job_counts(M, N, K, tiles, e, epilogue_reads=1)
        split = 1
        if t < ceilings.sms and K >= 2 * SPLIT_MIN_K:
            split = max(1, min(math.ceil(ceilings.sms / t), K // SPLIT_MIN_K))
        n_tiles += t * split
        flops += f
        l2 += b + (2 * split * M * N * 4 if split > 1 else 0)  # fp32 partials written and read once
        if activations_in_hbm:
            hbm += (M * K + K * N + M * N) * e
        elif K == batch:  # a weight gradient: its fp32 result leaves the chip
            hbm += M * N * 4
        else:  # an activation GEMM: its weight comes in
            hbm += N * K * e
    peak = ceilings.fp32_flops if dtype == "float32" else ceilings.bf16_flops
    return n_tiles, flops, l2, phase_terms(n_tiles, flops, l2, hbm, peak, ceilings)


def predict_phases(cfg: SeDAConfig, batch: int, stage: int, policy: str = "save", dtype: str = "bfloat16",
                   ceilings: Ceilings = H200, record: StepRecord | None = None) -> Prediction:
    """The phase design's predicted step time (module doc) under ``policy`` (:data:`POLICIES`)."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    record = record or step_ops(cfg, batch, stage, dtype)
    phases = phases_of(record.ops)
    saved = record.saved_bytes
    if policy == "recompute" and stage == 2:
        step_jobs, step_saved = per_step_forward(cfg, batch, dtype)
        depths = sorted({dep for dep, _ in step_jobs})
        one_step = [Phase(tuple(mnk for dep, mnk in step_jobs if dep == k)) for k in depths]
        phases = phases + one_step * cfg.translator_steps
        saved = saved - cfg.translator_steps * (step_saved - 2 * batch * cfg.dim * _DTYPE_BYTES[dtype])
    in_hbm = saved > L2_BYTES
    terms = {"compute": 0.0, "L2": 0.0, "HBM": 0.0}
    tiles, flops, l2 = 0, 0.0, 0.0
    for ph in phases:
        t, f, b, pt = _phase_cost(ph, batch, dtype, cfg, ceilings, in_hbm)
        tiles, flops, l2 = tiles + t, flops + f, l2 + b
        bound = max(pt, key=pt.get)
        terms[bound] += pt[bound]
    terms["sync"] = ceilings.launch_s + len(phases) * ceilings.pdl_boundary_s
    bound = max(terms, key=terms.get)
    counts = {"phases": len(phases), "tiles": tiles, "flops": flops, "l2_bytes": l2, "saved_bytes": saved}
    return Prediction(f"phases-{policy}", batch, sum(terms.values()), bound, terms, counts)


# inside a fused op: ops that launch no kernel (allocations), and the label range check the
# launchers run on CPU tensors only (on a GPU it would sync, so they skip it there)
_ALLOCATIONS = ("empty", "empty_like", "empty_strided", "new_empty")
_CPU_ONLY = ("aminmax", "item", "_local_scalar_dense")


def fused_step_counts(cfg: SeDAConfig, stage: int, unroll: str = "rowblock",
                      dtype: str = "bfloat16") -> tuple[int, int, int]:
    """``(aten ops, glue kernels, Triton launches)``: :func:`fused_step_ops`' first three."""
    return fused_step_ops(cfg, stage, unroll, dtype)[:3]


def fused_step_ops(cfg: SeDAConfig, stage: int, unroll: str = "rowblock",
                   dtype: str = "bfloat16") -> tuple[int, int, int, int, int]:
    """``(aten ops, glue kernels, Triton launches, views, host launches)`` of one step of the
    training ops the library ships (the ``"triton"`` backend's pieces in the reference losses,
    loss + backward, the model in ``dtype`` as the eager step is recorded), counted on the CPU
    with the launches captured, not run; ``unroll``: ``"rowblock"`` or ``"phases-<policy>"``, the
    training implementation (the policy is stage 2's).
    - Aten ops: every op the step dispatches, the fused custom ops (``seda_fast::*``) and the torch
      ops their launchers issue around the launches included (views and allocations too: each costs
      the host a dispatch), but not the launchers' CPU-only label range check.
    - Glue kernels: the aten ops that launch one: not views (``t``, ``detach``, ``view``...), as the
      baselines count them, not allocations, and not the fused custom ops, whose own launches are
      the third count.
    - Views: the aten ops that return their input's storage (the host prices them at ``view_op_s``).
    - Host launches: what the host launches on CUDA in a steady-state loop: each phase launcher's
      range (a launch group) is one CUDA-graph replay once its launches recur
      (``kernels/_graphs.py``), every other launch one.
    The phase schedule's semantic prefix counts as on CUDA: one graph replay (its launcher's ops
    are not issued per step), plus its input copy and output clone. The second of two steps is
    recorded, so the constant tables a first step builds are not counted. None depends on the
    batch: four rows are recorded."""
    import torch

    from .. import reference
    from ..backends import TRITON
    from ..model import SeDA
    from ..ops.runtime import kernels
    torch.manual_seed(0)
    torch_dtype = getattr(torch, dtype)
    model = SeDA(cfg, backend="eager").to(torch_dtype).train()
    model.set_stage(stage)
    model.fused_impl = "rowblock" if unroll == "rowblock" else "phases"
    if unroll != "rowblock":
        model.activation_memory = unroll.split("-", 1)[1]
    visual = torch.randn(4, cfg.visual_dim, dtype=torch_dtype)
    text = torch.randn(cfg.num_classes, cfg.text_dim, dtype=torch_dtype)
    labels = torch.arange(4) % cfg.num_classes

    def step():
        if stage == 1:
            loss = reference.learner_loss(model, visual, labels, pieces=TRITON.pieces)[0]
        else:
            loss = reference.translator_loss(model, visual, labels, text, True, pieces=TRITON.pieces)[0]
        loss.backward()
    with kernels().capture_launches(keep_args=False):  # a first step builds the cached tables (as on CUDA)
        step()
    model.zero_grad(set_to_none=True)  # as the eager step is recorded: no gradient to accumulate into
    with kernels().capture_launches(keep_args=False) as launches:
        ops = record_aten_ops(step, nested=True)
    ops = [o for o in ops if o.inside != "semantic_phases" and not (o.inside and o.name in _CPU_ONLY)]
    names = [kernels().kernel_name(launch.kernel) for launch in launches]
    semantic = names.count("infer_phase_kernel")  # on CUDA: one replay of the prefix's captured graph
    glue = sum(1 for o in ops if not o.view and o.namespace != "seda_fast" and o.name not in _ALLOCATIONS)
    extra = 2 if semantic else 0  # the replay's input copy and output clone
    views = sum(1 for o in ops if o.view)
    rest = [launch for launch, name in zip(launches, names) if name != "infer_phase_kernel"]
    host = sum(1 for launch in rest if launch.group is None) + len({launch.group for launch in rest} - {None})
    replay = 1 if semantic else 0
    return len(ops) + extra, glue + extra, len(names) - semantic + replay, views, host + replay


def unroll_shapes(cfg: SeDAConfig, batch: int, dtype: str = "bfloat16") -> Counter:
    """The eager stage-2 step's matmuls that belong to the unroll, as a Counter of ``(M, N, K)``:
    each step's forward matmuls (:func:`per_step_forward`) ``K2`` times and, for each, its two
    backward matmuls (input gradient ``(M, K, N)``, weight gradient ``(N, K, M)``)."""
    K2 = cfg.translator_steps
    out = Counter()
    for _, (M, N, K) in per_step_forward(cfg, batch, dtype)[0]:
        out[(M, N, K)] += K2
        out[(M, K, N)] += K2
        out[(N, K, M)] += K2
    return out


def denoise_shapes(cfg: SeDAConfig, batch: int) -> Counter:
    """The eager stage-2 step's matmuls of the random-t diffusion term: the denoiser's forward and,
    for each, its weight gradient and (all but the first, whose input ``x_t`` needs none) its input
    gradient, as ``(M, N, K)``."""
    d, H, nh = cfg.dim, cfg.hidden, cfg.layers - 1
    fwd = [(batch, H, d)] + [(batch, H, H)] * nh + [(batch, d, H)]
    out = Counter(fwd)
    for i, (M, N, K) in enumerate(fwd):
        out[(N, K, M)] += 1
        if i:
            out[(M, K, N)] += 1
    return out


def semantic_shapes(cfg: SeDAConfig, batch: int) -> Counter:
    """The eager stage-2 step's matmuls of the Learner's sample (its condition term and K1 steps;
    the visual projection also feeds ``m``'s start, so it stays with the glue)."""
    d, H, K1 = cfg.dim, cfg.hidden, cfg.learner_steps
    return Counter({(batch, H, d): 1 + K1, (batch, H, H): K1 * (cfg.layers - 1), (batch, d, H): K1})


def semantic_phase_costs(cfg: SeDAConfig, batch: int, dtype: str = "bfloat16", ceilings: Ceilings = H200) -> list:
    """The phase schedule's prefix that ends with the Learner's sample (``seda_fast::semantic_phases``,
    what stage 2 runs for ``s`` with the phase unroll), costed as inference phases; the prefix's
    projector phase repeats the glue's projection of ``z``."""
    from ..ops.runtime import kernels
    from .cost_phases import phase_costs
    ip = kernels().infer_phases_module
    n = ip.semantic_phase_count(cfg.layers, cfg.learner_steps, ip.use_fold(batch))
    out = []
    for pc in phase_costs(cfg, batch, dtype, ceilings)[:n]:
        bound = max(pc.terms, key=pc.terms.get)
        out.append({"kind": pc.name, "tiles": pc.tiles, "flops": pc.flops, "bound": bound, "time_s": pc.terms[bound]})
    return out


def _rowblock_gpu(shapes, batch: int, cfg: SeDAConfig, dtype: str, ceilings: Ceilings) -> tuple[float, dict]:
    """GPU seconds of ``shapes`` run the row-block way (see :func:`predict_rowblock`) and its counts."""
    import torch

    from ..kernels import pick_blocks
    e = _DTYPE_BYTES[dtype]
    blocks = pick_blocks(batch, cfg.dim, cfg.hidden, None, getattr(torch, dtype))
    programs = math.ceil(batch / blocks.BM)
    rows = min(blocks.BM, batch)
    per_program, act_flops, wgrad = 0.0, 0.0, {"compute": 0.0, "L2": 0.0, "HBM": 0.0}
    peak = ceilings.fp32_flops if dtype == "float32" else ceilings.bf16_flops
    wtiles = _tiles(64, 64)
    for M, N, K in shapes:
        if K == batch and M != batch:  # a weight gradient: its own launch over all rows
            t, f, b = job_counts(M, N, K, wtiles, e)
            pt = phase_terms(t, f, b, M * N * 4, peak, ceilings)
            bound = max(pt, key=pt.get)
            wgrad[bound] += pt[bound]
        else:  # an activation GEMM inside a row-block kernel
            per_program += N * K * e + math.ceil(N / blocks.BN) * rows * K * 4
            act_flops += 2.0 * M * N * K
    busy = min(programs, ceilings.sms)
    waves = math.ceil(programs / ceilings.sms)
    gpu = {"compute": act_flops / (peak * busy / ceilings.sms),
           "L2": max(waves * per_program / ceilings.l2_per_sm_bytes_per_s,
                     programs * per_program / ceilings.l2_bytes_per_s)}
    return max(gpu.values()) + sum(wgrad.values()), {"programs": programs, "l2_bytes_per_program": per_program}


def unroll_phase_costs(cfg: SeDAConfig, batch: int, policy: str, dtype: str = "bfloat16",
                       ceilings: Ceilings = H200) -> list[dict]:
    """Per phase of the shipped phase unroll (:mod:`seda_fast.kernels.unroll_phases`, forward then
    backward, its own schedule, jobs and tiles): tiles, FLOPs, L2 -> SM bytes, HBM bytes and the
    seconds of its binding term (:func:`_kernel_phase_costs`)."""
    import torch

    from ..ops.runtime import kernels
    U = kernels().unroll_phases_module
    d, H, L, K2 = cfg.dim, cfg.hidden, cfg.layers, cfg.translator_steps
    fwd, bwd = U.build_schedule(L, K2, policy)
    in_hbm = U.saved_bytes(batch, d, H, L, K2, getattr(torch, dtype), policy) > L2_BYTES
    return _kernel_phase_costs(cfg, batch, fwd + bwd, K2, 6, in_hbm, dtype, ceilings)


def denoise_phase_costs(cfg: SeDAConfig, batch: int, dtype: str = "bfloat16", ceilings: Ceilings = H200) -> list[dict]:
    """Per phase of stage 2's random-t diffusion term as phases (:mod:`seda_fast.kernels.denoise_phases`:
    the unroll's phase kernel on its own schedule, three weight-gradient jobs), as
    :func:`unroll_phase_costs`."""
    from ..ops.runtime import kernels
    D = kernels().denoise_phases_module
    fwd, bwd = D.build_schedule(cfg.layers)
    saved = D.saved_numel(batch, cfg.dim, cfg.hidden, cfg.layers) * _DTYPE_BYTES[dtype]
    return _kernel_phase_costs(cfg, batch, fwd + bwd, 1, D.WGRAD_JOBS, saved > L2_BYTES, dtype, ceilings,
                               x0_loss=True)


def _kernel_phase_costs(cfg: SeDAConfig, batch: int, rows, steps: int, n_wgrad: int, in_hbm: bool, dtype: str,
                        ceilings: Ceilings, x0_loss: bool = False) -> list[dict]:
    """Per schedule row of ``unroll_phase_kernel`` for a ``steps``-step call (the launcher's tiles, row
    by row: ``row_tiles``;
    weight-gradient tiles and row splits as its launchers pick them, over the first ``n_wgrad``
    jobs). Activation GEMMs read their weight from HBM once and their operands from L2 (from HBM
    too when ``in_hbm``: the saved activations exceed the L2); a weight-gradient job is tiled by the
    kernel's weight-gradient tile over its row splits, and writes (and the host re-reads) one fp32
    partial per split. ``x0_loss``: the output phase also reads the target and stores the loss's
    gradient (the diffusion term's forward)."""
    import torch

    from ..ops.runtime import kernels
    U = kernels().unroll_phases_module
    d, H, L = cfg.dim, cfg.hidden, cfg.layers
    tdt = getattr(torch, dtype)
    e = _DTYPE_BYTES[dtype]
    tiles, wide = U.call_tiles(None, None, batch, d, H, tdt)
    (WBN, WBK), splits = U.wgrad_plan(tdt, batch, d, H, L - 1, tiles, n_wgrad)
    peak = ceilings.fp32_flops if dtype == "float32" else ceilings.bf16_flops
    out = []
    for row in rows:
        n_tiles, flops, l2, hbm = 0, 0.0, 0.0, 0.0
        row_tiles = U.row_tiles(row, batch, d, H, L - 1, steps, tiles, wide)
        for _, M, N, Kr in U.phase_jobs(row, batch, d, H, L - 1, n_wgrad):
            if row[0] == U.W_GRAD:  # G^T X over Kr rows, SP partials of [M, N] fp32
                wt = _tiles(WBN, WBK)
                t, f, b = job_counts(M, N, Kr, wt, e)
                t *= splits
                b += 2 * splits * M * N * 4
                hbm += 2 * splits * M * N * 4 + (Kr * (M + N) * e if in_hbm else 0)
            else:
                extra = 1 if x0_loss and row[0] == U.F_O else 0  # the target's tile in, the gradient's out
                t, f, b = job_counts(M, N, Kr, row_tiles, e, epilogue_reads=1 + extra)
                b += extra * t * row_tiles.BM * row_tiles.BN * e
                hbm += N * Kr * e + ((M * Kr + 2 * M * N) * e if in_hbm else 0)
            n_tiles, flops, l2 = n_tiles + t, flops + f, l2 + b
        pt = phase_terms(n_tiles, flops, l2, hbm, peak, ceilings)
        bound = max(pt, key=pt.get)
        out.append({"kind": U.KIND_NAMES[row[0]], "tiles": n_tiles, "flops": flops, "l2_bytes": l2, "hbm_bytes": hbm,
                    "bound": bound, "time_s": pt[bound]})
    return out


def center_ema_cost(cfg: SeDAConfig, batch: int, ceilings: Ceilings = H200) -> tuple[float, int, int]:
    """The stage-1 center EMA on the GPU (``kernels.center_update``), and its launches and host ops
    beyond what :func:`fused_step_counts` records (four rows: one launch): a program walks at most ``R`` rows,
    ``RB`` at a time, each block two dependent round trips to the L2 (its labels, then its classes'
    rows), so the walk is latency-bound: ``2 ceil(min(B, R) / RB) l2_latency_s``. Past ``R`` rows
    the splits walk side by side and a second launch adds them (its loads issued together: two more
    round trips; the host also allocates the splits' sums and counts)."""
    from ..ops.runtime import kernels
    blocks = kernels().center_update.update_blocks(cfg.num_classes, cfg.dim)
    walk = 2 * math.ceil(min(batch, blocks["R"]) / blocks["RB"]) * ceilings.l2_latency_s
    split = batch > blocks["R"]
    return walk + (2 * ceilings.l2_latency_s if split else 0.0), int(split), 2 * int(split)


def predict_rowblock(cfg: SeDAConfig, batch: int, stage: int, dtype: str = "bfloat16", ceilings: Ceilings = H200,
                     record: StepRecord | None = None, graph: bool = False, unroll: str = "rowblock",
                     raw: bool = False) -> Prediction:
    """The training ops the library ships: row-block kernels (a program owns ``BM`` rows, as
    :func:`seda_fast.kernels.pick_blocks` picks them, and streams the whole weight of every
    activation GEMM of the step it computes, re-reading its fp32 activation block once per ``BN``
    output tile; stage 2's backward also recomputes each unroll step's forward) plus
    weight-gradient launches (one program per 64 x 64 output tile over all rows), and the torch
    glue around them (its element-wise GPU work is left out); stage 1 adds its center EMA's
    latency-bound walk (:func:`center_ema_cost`). ``unroll="phases-<policy>"`` (stage 2):
    the unroll, the random-t diffusion term and the Learner's sample run as phases instead
    (:func:`unroll_phase_costs`, :func:`denoise_phase_costs`, :func:`semantic_phase_costs`; their
    matmuls, :func:`unroll_shapes`, :func:`denoise_shapes`, :func:`semantic_shapes`, leave the
    step's), and the matmuls left are the glue's (projectors, time MLP, heads), torch's, costed as
    the eager baseline costs one (roofline of FLOPs and HBM bytes); no row-block kernel runs.
    Host: every aten op at ``aten_op_s`` (a view at ``view_op_s``) and every host launch at
    ``launch_s`` (:func:`fused_step_ops`: a phase launcher's range is one CUDA-graph replay, priced
    as one launch; with ``raw`` every Triton launch is one), overlapped with the GPU (the longer
    counts); the GPU pays a graph boundary per launch and glue kernel (views launch none, as in the
    baselines) and per phase of the semantic prefix (one host launch: a graph of its phases); with
    ``graph`` (the step captured whole) no host term."""
    record = record or step_ops(cfg, batch, stage, dtype)
    matmuls = _matmuls(record.ops)
    shapes = [o.mnk for o in matmuls]
    phases, glue_s, glue_flops, n_prefix = [], 0.0, 0.0, 0
    if stage == 2 and unroll == "rowblock":  # the unroll's backward recomputes each step's forward from x_k and m_k
        shapes += [mnk for _, mnk in per_step_forward(cfg, batch, dtype)[0]] * cfg.translator_steps
    elif unroll != "rowblock":  # stage 2: the unroll, the diffusion term and the Learner's sample as phases;
        # stage 1: the diffusion term as phases
        left = denoise_shapes(cfg, batch)
        phases = denoise_phase_costs(cfg, batch, dtype, ceilings)
        if stage == 2:
            left += unroll_shapes(cfg, batch, dtype) + semantic_shapes(cfg, batch)
            prefix = semantic_phase_costs(cfg, batch, dtype, ceilings)
            n_prefix = len(prefix)
            phases = prefix + phases + unroll_phase_costs(cfg, batch, unroll.split("-", 1)[1], dtype, ceilings)
        rest = []
        for o in matmuls:
            if left[o.mnk] > 0:
                left[o.mnk] -= 1
            else:
                rest.append(o)
        # what is left is the glue's matmuls, torch's own: the recorded ops, costed as the eager baseline costs them
        peak = ceilings.fp32_flops if dtype == "float32" else ceilings.bf16_flops
        glue_s = sum(_kernel_s(o.flops, o.bytes, peak, ceilings) for o in rest)
        glue_flops = sum(o.flops for o in rest)
        shapes = []
    gpu_s, counts = _rowblock_gpu(shapes, batch, cfg, dtype, ceilings)
    gpu_s += glue_s + sum(p["time_s"] for p in phases)
    n_ops, n_glue, n_launches, n_views, n_host = fused_step_ops(cfg, stage, unroll, dtype)
    if raw:
        n_host = n_launches
    if stage == 1:
        ema_s, more_launches, more_ops = center_ema_cost(cfg, batch, ceilings)
        gpu_s, n_launches, n_ops = gpu_s + ema_s, n_launches + more_launches, n_ops + more_ops
        n_host += more_launches
    # every kernel boundary of the step: the semantic prefix is one launch (a graph replay) of n_prefix kernels
    boundaries = (n_glue + n_launches + max(n_prefix - 1, 0)) * ceilings.graph_boundary_s
    if graph:
        terms = {"GPU": gpu_s, "sync": ceilings.launch_s + boundaries}
        time_s = sum(terms.values())
    else:  # the host issues the step while the GPU runs it: the longer of the two
        terms = {"GPU": gpu_s + boundaries, "host": host_s(n_ops, n_views, ceilings) + n_host * ceilings.launch_s}
        time_s = max(terms.values())
    flops = sum(2.0 * m * n * k for m, n, k in shapes) + glue_flops + sum(p["flops"] for p in phases)
    counts.update(aten_ops=n_ops, views=n_views, glue_kernels=n_glue, launches=n_launches, host_launches=n_host,
                  flops=flops,
                  saved_bytes=None, phases=len(phases) or None, glue_s=glue_s)
    name = ("rowblock" if unroll == "rowblock" else f"unroll-{unroll}") + ("-graph" if graph else "-raw" if raw else "")
    return Prediction(name, batch, time_s, max(terms, key=terms.get), terms, counts)


def _tiles(BM: int, BN: int):
    from ..ops.runtime import kernels
    return kernels().infer_phases_module.PhaseTiles(BM, BN, 32, 4, 2)


def predict(cfg: SeDAConfig, batch: int, stage: int, impl: str, dtype: str = "bfloat16",
            ceilings: Ceilings = H200, record: StepRecord | None = None) -> Prediction:
    """Predicted step time of ``impl`` (:data:`IMPLS`) for ``stage`` at ``batch``, the model's label
    range check included (:func:`with_label_check`)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    record = record or step_ops(cfg, batch, stage, dtype)
    if impl.startswith("phases-"):
        p = predict_phases(cfg, batch, stage, impl.split("-", 1)[1], dtype, ceilings, record)
    elif impl.startswith(("rowblock", "unroll-")):
        graph, raw = impl.endswith("-graph"), impl.endswith("-raw")
        base = impl.removesuffix("-graph").removesuffix("-raw")
        unroll = "rowblock" if base == "rowblock" else base[len("unroll-"):]
        p = predict_rowblock(cfg, batch, stage, dtype, ceilings, record, graph=graph, unroll=unroll, raw=raw)
    else:
        p = predict_ops(record.ops, batch, impl, dtype, ceilings)
        p = replace(p, counts=dict(p.counts, saved_bytes=record.saved_bytes))
    return with_label_check(p, impl, ceilings)


LABEL_CHECK_KERNELS = 4  # clamp, eq, all and the device-side assert, while a CUDA graph is captured


def with_label_check(p: Prediction, impl: str, ceilings: Ceilings = H200) -> Prediction:
    """``p`` plus the label range check of a step run as users run it (``model(visual, labels)``;
    :func:`step_ops` and :func:`fused_step_ops` record the reference's loss, without it): issued from
    Python its reduction and scalar reads (``label_check_s``), which the host waits on, so
    nothing overlaps it; in a CUDA graph (``*-graph``, and the whole-phase-step designs) its
    :data:`LABEL_CHECK_KERNELS` device-side kernels; under torch.compile nothing (the check is
    skipped while tracing)."""
    if impl == "torch_compile":
        return p
    graph = impl.endswith("-graph") or impl.startswith("phases-")
    extra = LABEL_CHECK_KERNELS * ceilings.graph_boundary_s if graph else ceilings.label_check_s
    return replace(p, time_s=p.time_s + extra, terms=dict(p.terms, labels=extra))


def comparison(cfg: SeDAConfig, batches=BATCHES, dtype: str = "bfloat16", ceilings: Ceilings = H200) -> list[dict]:
    """Per stage, batch and implementation: predicted seconds, bound, FLOPs, phases and saved bytes."""
    rows = []
    for stage in STAGES:
        for b in batches:
            record = step_ops(cfg, b, stage, dtype)
            for impl in IMPLS:
                if stage == 1 and impl.startswith("unroll-phases-recompute"):  # stage 1 has no unroll to recompute
                    continue
                p = predict(cfg, b, stage, impl, dtype, ceilings, record)
                rows.append({"stage": stage, "batch": b, "impl": impl, "time_s": p.time_s, "bound": p.bound,
                             "flops": p.counts["flops"], "phases": p.counts.get("phases"),
                             "saved_bytes": p.counts["saved_bytes"]})
    return rows


TARGETS = (  # (stage, batch, impl, against, at least this many times faster): the shipped paths, then the design
    (2, 256, "unroll-phases-save", "eager", 3.0), (2, 256, "unroll-phases-save-graph", "torch_compile", 1.5),
    (1, 256, "rowblock", "eager", 2.0), (1, 256, "rowblock-graph", "eager", 2.0),
    (1, 256, "unroll-phases-save", "eager", 2.0), (1, 256, "unroll-phases-save-graph", "eager", 2.0),
    (2, 4096, "unroll-phases-save-graph", "torch_compile", 1.2),
    (2, 256, "phases-save", "eager", 3.0), (2, 256, "phases-save", "torch_compile", 1.5),
    (1, 256, "phases-save", "eager", 2.0), (2, 4096, "phases-save", "torch_compile", 1.2),
)


def target_lines(rows: list[dict]) -> list[str]:
    """The fused-training targets against these predictions, met or missed, with the figures."""
    t = {(r["stage"], r["batch"], r["impl"]): r for r in rows}
    out = []
    for stage, b, impl, other, want in TARGETS:
        if (stage, b, impl) in t and (stage, b, other) in t:
            got = t[(stage, b, other)]["time_s"] / t[(stage, b, impl)]["time_s"]
            out.append(f"stage {stage}, B={b}: {impl} {got:.2f}x {other} (target {want}x): "
                       f"{'met' if got >= want else 'missed'}")
    for b in dict.fromkeys(r["batch"] for r in rows):
        if (2, b, "phases-recompute") in t and (2, b, "eager") in t:
            ratio = t[(2, b, "phases-recompute")]["saved_bytes"] / t[(2, b, "eager")]["saved_bytes"]
            out.append(f"stage 2, B={b}: recompute saves {ratio:.2f}x eager's activation bytes (target <= 0.5x "
                       f"of eager's peak memory: {'met' if ratio <= 0.5 else 'missed'} on saved bytes)")
    return out


def table(rows: list[dict]) -> str:
    lines = ["| stage | B | impl | ms | bound | TFLOP | phases | saved MiB |", "|---:|---:|---|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['batch']} | {r['impl']} | {r['time_s'] * 1e3:.3f} | {r['bound']} "
                     f"| {r['flops'] / 1e12:.3f} | {r['phases'] if r['phases'] is not None else ''} "
                     f"| {'' if r['saved_bytes'] is None else format(r['saved_bytes'] / 2**20, '.1f')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python -m seda_fast cost-training``: the table and the targets at the default config."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m seda_fast cost-training",
                                     description="Predicted training-step time (loss + backward) per stage, batch "
                                                 "and implementation (eager, torch.compile, the fused paths shipped: "
                                                 "row blocks and the phase unroll with saved or recomputed "
                                                 "activations, issued from Python (the phase unroll's ranges "
                                                 "replayed as CUDA graphs; -raw: one launch per phase) and as one "
                                                 "CUDA graph of the whole step; the design of a whole phase step), "
                                                 "at the default config and the H200's ceilings")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(_DTYPE_BYTES))
    args = parser.parse_args(argv)
    from ..presets import config
    rows = comparison(config("default"), dtype=args.dtype)
    print(table(rows))
    print()
    print("\n".join(target_lines(rows)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
