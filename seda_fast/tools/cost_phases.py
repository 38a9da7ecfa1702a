"""Predicted time of the phase-schedule fused inference (``kernels/infer_phases.py``).

Pure Python, from counts: the phase list and the tiles are the launcher's own
(:func:`build_schedule`, :func:`pick_phase_plan`, :func:`phase_tiles`), the ceilings are
:class:`seda_fast.cost_model.Ceilings` (H200 by default; measured or assumed as that class says).

Per phase, for each of its jobs (``[B, N] = [B, K] W^T``, tiles ``BM x BN``):

* FLOPs as the tiles execute them, padded rows and columns included (``B = 1`` still computes 16
  rows), at the dtype's peak shared by the SMs that have a tile (``min(tiles, sms)``). Optimistic
  for ``BM = 16`` tiles, whose mma.sync does not reach the wgmma peak.
* L2 -> SM bytes per tile: its weight slice ``BN K`` and activation block ``BM K`` (PFIN's P and G
  jobs read two operands: ``K = 2d`` counts both) plus the epilogue's ``[BM, BN]`` reads and one
  ``[BM, BN]`` store, all in the model dtype. Time: the per-SM link (``l2_per_sm_bytes_per_s``)
  times the waves of tiles on ``sms`` SMs (one tile per SM at a time: conservative, the phase
  kernel's registers would let 2 fit), or the aggregate L2 bandwidth, whichever is longer.
  Split-K tiles (``split_k = S > 1``, :func:`pick_infer_tiles` with ``split_k=True``): ``S`` work
  items per output tile, whose operand slices partition K, plus ``S`` fp32 ``[BM, BN]`` partials
  stored and read back by the tile's last program (:func:`job_counts`; the bytes spread evenly over
  the work items). A split phase also waits, in series, for its fixup (:func:`split_fixup_s`,
  added to its L2 term: the phases that split are L2-bound): two L2 round trips (the arrival
  atomic, which also waits for the partials' stores; then the reload) and the last program's reload
  of ``S`` partials over its own link, as :mod:`cost_training` charges its split reductions.
* HBM: each weight's first use in the call (``N K`` values; later steps find it in L2: the
  default model's inference weights are ~15 MiB), plus, when the activation buffers do not fit in
  L2 (:data:`L2_BYTES`, assumed), every activation byte the phase reads or writes.

A phase takes the longest of its terms; the call adds them up, plus its sync cost:

* ``"phases"`` (graph replay of programmatic dependent launches, as on the H200): one
  ``pdl_boundary_s`` per phase and one ``launch_s`` for the replay;
* ``"phases-raw"`` (no graph): one ``launch_s`` per phase (Python launches);
* ``"phases-split"``: ``"phases"`` on split-K tiles (``launch_options(split_k=True)``);
* ``"persistent"``: one ``launch_s`` plus one ``barrier_s`` per phase but the last; its tiles are
  spread over the co-resident grid (``sms`` programs), the same waves as above.

No overlap between phases is assumed (a barrier or kernel boundary drains the pipeline), so the
figure is an upper-ish estimate for the compute/L2 terms and a lower one for everything the
model leaves out (tail effects inside a wave, mma.sync efficiency, the prologue's LayerNorm passes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import SeDAConfig
from .cost_model import H200, Ceilings, _DTYPE_BYTES

L2_BYTES = 50e6  # assumed L2 capacity that activations may stay in (H200 datasheet: 50 MB class)
IMPLS = ("phases", "phases-raw", "phases-split", "persistent")
BATCHES = (1, 64, 1024, 16384)

# epilogue [BM, BN] reads per job kind (the cond/h/x/m/g tiles the fused element-wise work loads)
_EPILOGUE_READS = {"proj": 0, "cond_ln": 0, "cond_t": 0, "A": 1, "A0": 0, "AF": 1, "R": 1, "O": 1, "P": 0, "G": 0,
                   "D": 2, "head": 0}
# fp32 [BM, BN] tiles of the loop state w read or stored: the folded A reads and stores it; a stage's
# first A, riding in its condition phase ("A0"), stores it (A0's K is d: the call without start noise;
# with it A0 also reads the noise through W_x, K = 2d)
_U_TILES = {"AF": 2, "A0": 1}


def _ip():
    from ..ops.runtime import kernels
    return kernels().infer_phases_module


@dataclass(frozen=True)
class PhaseCost:
    name: str
    tiles: int
    flops: float            # as executed (padded tiles)
    l2_bytes: float         # L2 -> SM, all tiles
    hbm_bytes: float
    terms: dict             # seconds: compute, L2, HBM

    @property
    def time_s(self) -> float:
        return max(self.terms.values())

    @property
    def bound(self) -> str:
        return max(self.terms, key=self.terms.get)


def phase_costs(cfg: SeDAConfig, batch: int, dtype: str = "bfloat16", ceilings: Ceilings = H200,
                impl: str = "phases", split_k: bool = False, tiles=None, fold: bool | None = None) -> list[PhaseCost]:
    """Per phase of one call: tiles (``tiles`` for every phase, or ``impl``'s from the launcher's
    :func:`pick_phase_plan` on ``ceilings.sms`` SMs), FLOPs, bytes and the time of each term (see the
    module doc); ``fold``: the folded schedule (``None``: the launcher's choice, :func:`use_fold`)."""
    import torch
    ip = _ip()
    e = _DTYPE_BYTES[dtype]
    d, H, C, Dv = cfg.dim, cfg.hidden, cfg.num_classes, cfg.visual_dim
    fold = ip.use_fold(batch) if fold is None else fold
    phases = ip.build_schedule(d, H, C, Dv, cfg.layers, cfg.learner_steps, cfg.translator_steps, fold)
    plan = (tiles,) * len(phases) if tiles else ip.pick_phase_plan(
        phases, batch, d, H, getattr(torch, dtype), "persistent" if impl == "persistent" else "phases", split_k,
        ceilings.sms)
    peak = ceilings.fp32_flops if dtype == "float32" else ceilings.bf16_flops
    # y z x s x0 g | cond h h sp | logits | folded: u (fp32)
    act_bytes = batch * (5 * d + 4 * H + C) * e + (batch * H * 4 if fold else 0)
    spill_acts = act_bytes > L2_BYTES
    seen_weights: set = set()
    out = []
    for ph, tiles in zip(phases, plan):
        n_tiles, flops, l2, hbm = 0, 0.0, 0.0, 0.0
        for name, N, K in ph.jobs:
            u_tiles = _U_TILES.get(name, 0)
            t, f, b = job_counts(batch, N, K, tiles, e, _EPILOGUE_READS[name], ip.job_block(name, N, tiles), u_tiles)
            n_tiles, flops, l2 = n_tiles + t, flops + f, l2 + b
            wkey = (name, ph.row[1], ph.row[3] if name == "R" else 0)  # job, stage, residual layer: the distinct weight
            if wkey not in seen_weights:
                seen_weights.add(wkey)
                hbm += N * K * e
            if spill_acts:
                hbm += batch * (K + (_EPILOGUE_READS[name] + 1) * N) * e
        terms = phase_terms(n_tiles, flops, l2, hbm, peak, ceilings)
        terms["L2"] += split_fixup_s(tiles, ceilings)
        out.append(PhaseCost(ph.name, n_tiles, flops, l2, hbm, terms))
    return out


def split_fixup_s(tiles, ceilings: Ceilings = H200) -> float:
    """Seconds a split-K phase waits in series after its GEMMs (module doc): two L2 round trips and
    one program's reload of ``split_k`` fp32 ``[BM, BN]`` partials; 0 unsplit. Added to the phase's
    L2 term."""
    S = getattr(tiles, "split_k", 1)
    if S == 1:
        return 0.0
    return 2 * ceilings.l2_latency_s + S * tiles.BM * tiles.BN * 4 / ceilings.l2_per_sm_bytes_per_s


def job_counts(M: int, N: int, K: int, tiles, e: int, epilogue_reads: int = 0,
               bn: int | None = None, fp32_tiles: int = 0) -> tuple[int, float, float]:
    """One GEMM job ``[M, N] = [M, K] [K, N]`` cut into ``tiles.BM x BN`` output tiles (``bn``,
    default ``tiles.BN``), each split into ``tiles.split_k`` K slices: ``(work items = programs,
    FLOPs as executed (padded), L2 -> SM bytes)``. An output tile reads its ``BN K`` and ``BM K``
    operand slices (``e`` bytes per value; the slices of a split tile partition K), its
    ``epilogue_reads`` ``[BM, BN]`` tiles, and stores one; split into ``S > 1`` slices it also
    stores ``S`` fp32 ``[BM, BN]`` partials and its last program reads them back; ``fp32_tiles``:
    further fp32 ``[BM, BN]`` tiles it reads or stores (the folded steps' u)."""
    BM, BN, S = tiles.BM, bn or tiles.BN, getattr(tiles, "split_k", 1)
    out = math.ceil(M / BM) * math.ceil(N / BN)
    flops = 2.0 * math.ceil(M / BM) * BM * math.ceil(N / BN) * BN * K
    partials = 2 * S * BM * BN * 4 if S > 1 else 0
    return out * S, flops, out * ((BN * K + BM * K + (epilogue_reads + 1) * BM * BN) * e + partials
                                  + fp32_tiles * BM * BN * 4)


def phase_terms(n_tiles: int, flops: float, l2: float, hbm: float, peak: float, ceilings: Ceilings) -> dict:
    """Seconds per term of one phase (module doc): compute on the SMs that have a tile, L2 (per-SM
    link times waves, or the aggregate, whichever is longer), HBM."""
    busy = min(n_tiles, ceilings.sms)
    waves = math.ceil(n_tiles / ceilings.sms)
    return {"compute": flops / (peak * busy / ceilings.sms),
            "L2": max(waves * (l2 / n_tiles) / ceilings.l2_per_sm_bytes_per_s, l2 / ceilings.l2_bytes_per_s),
            "HBM": hbm / ceilings.copy_bytes_per_s}


@dataclass(frozen=True)
class PhasePrediction:
    impl: str
    batch: int
    time_s: float
    terms: dict     # seconds summed over phases per bound (compute/L2/HBM) + "sync"
    counts: dict


def predict(cfg: SeDAConfig, batch: int, impl: str = "phases", dtype: str = "bfloat16",
            ceilings: Ceilings = H200) -> PhasePrediction:
    """Predicted time of one call of ``impl`` (``"phases"`` = graph replay, ``"phases-raw"``,
    ``"phases-split"``, ``"persistent"``): the phases' times plus the sync cost (module doc)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    costs = phase_costs(cfg, batch, dtype, ceilings, impl, split_k=impl == "phases-split")
    n = len(costs)
    sync = {"phases": ceilings.launch_s + n * ceilings.pdl_boundary_s,
            "phases-split": ceilings.launch_s + n * ceilings.pdl_boundary_s,
            "phases-raw": n * ceilings.launch_s,
            "persistent": ceilings.launch_s + (n - 1) * ceilings.barrier_s}[impl]
    terms = {"compute": 0.0, "L2": 0.0, "HBM": 0.0}
    for c in costs:
        terms[c.bound] += c.time_s
    terms["sync"] = sync
    counts = {"phases": n, "tiles": sum(c.tiles for c in costs), "flops": sum(c.flops for c in costs),
              "l2_bytes": sum(c.l2_bytes for c in costs), "hbm_bytes": sum(c.hbm_bytes for c in costs)}
    return PhasePrediction(impl, batch, sum(terms.values()), terms, counts)


def prediction_table(cfg: SeDAConfig, batches=BATCHES, dtype: str = "bfloat16", ceilings: Ceilings = H200) -> str:
    """Markdown: per batch and implementation, the predicted ms and where the time goes."""
    lines = ["Per term: the time of the phases that term bounds (their longest term), summed; sync as stated.", "",
             "| B | impl | ms | compute-bound ms | L2-bound ms | HBM-bound ms | sync ms | phases | tiles | L2->SM MiB |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b in batches:
        for impl in IMPLS:
            p = predict(cfg, b, impl, dtype, ceilings)
            t = p.terms
            lines.append(f"| {b} | {impl} | {p.time_s * 1e3:.3f} | {t['compute'] * 1e3:.3f} | {t['L2'] * 1e3:.3f} "
                         f"| {t['HBM'] * 1e3:.3f} | {t['sync'] * 1e3:.3f} | {p.counts['phases']} "
                         f"| {p.counts['tiles']} | {p.counts['l2_bytes'] / 2**20:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - a quick table
    from ..presets import config
    print(prediction_table(config("default")))
