"""Cost model of one inference call ``visual [B, Dv] -> (logits, s, m)`` (docs/math.md, "Inference").

FLOPs count the matmuls (2 per multiply-add); the elementwise work (SiLU, sigmoid, LayerNorm, DDIM
and gate updates) is O(B (H + d)) per step, well under 1% at the default sizes, and is left out.
The time MLP is not counted: its ``[K, H]`` tables depend only on the weights and are cached.

Minimum HBM bytes: every weight the chain uses read once, the two fp32 tables (``[K, H]`` time
embeddings + ``[K, 2]`` DDIM) per stage, the input ``visual`` read once and the three outputs written
once; nothing else has to leave the chip (the fused kernels keep activations on chip / in L2).

Floor: ``max(FLOPs / peak, bytes / bandwidth)`` at an H200's ceilings (:class:`Ceilings`):
bf16 dense tensor cores ~790 TFLOP/s and copy bandwidth ~4.3 TB/s (read + write), both measured on
that machine. The other ceilings (L2, sync costs) are stated assumptions until a GPU run
(``benchmarks/gpu_check.py``) measures them; :meth:`Ceilings.from_gpu_check` takes its figures.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from ..config import SeDAConfig


@dataclass(frozen=True)
class Ceilings:
    """Device ceilings the cost model divides by. Defaults: an H200 (sm_90a, 132 SMs).

    ``source`` says, per field, where the figure comes from: ``"measured on the H200"`` (bf16
    matmul 769-798 TFLOP/s at 8192^3, device copy ~4.3 TB/s read + write), ``"assumed"`` (L2
    aggregate ~10 TB/s as published GPU microbenchmarks show; per-SM L2 ~115 GB/s; sync costs), or
    ``"measured: <run>"`` once :meth:`from_gpu_check` has replaced it."""
    bf16_flops: float = 790e12          # dense bf16 tensor-core FLOP/s
    fp32_flops: float = 60e12           # IEEE fp32 FMA (no tensor cores), the fp32 parity path
    copy_bytes_per_s: float = 4.3e12    # HBM device-to-device copy, bytes read + written per second
    l2_bytes_per_s: float = 10e12       # L2 -> SMs, aggregate
    l2_per_sm_bytes_per_s: float = 115e9
    l2_latency_s: float = 0.5e-6        # one dependent load's round trip to the L2
    launch_s: float = 20e-6             # one Triton launch from Python
    aten_op_s: float = 5e-6             # host cost of one eager aten op (dispatcher + launch)
    view_op_s: float = 5e-6             # host cost of one view op (t, view, detach...: no launch)
    label_check_s: float = 25e-6        # a training step's label range check: a reduction, 2 reads, a sync
    graph_boundary_s: float = 1.3e-6    # one kernel boundary inside a CUDA graph
    barrier_s: float = 1e-6             # one grid barrier in a persistent kernel
    pdl_boundary_s: float = 1.3e-6      # one boundary in a CUDA graph of programmatic dependent launches
    sms: int = 132
    source: tuple = (("bf16_flops", "measured on the H200"), ("copy_bytes_per_s", "measured on the H200"),
                     ("fp32_flops", "assumed (datasheet ~67 TFLOP/s)"), ("l2_bytes_per_s", "assumed"),
                     ("l2_per_sm_bytes_per_s", "assumed"), ("l2_latency_s", "assumed"), ("launch_s", "assumed"),
                     ("aten_op_s", "assumed"), ("view_op_s", "assumed equal to aten_op_s until measured"),
                     ("label_check_s", "assumed: 3 ops and a 10 us sync"),
                     ("graph_boundary_s", "assumed"), ("barrier_s", "assumed"),
                     ("pdl_boundary_s", "assumed no cheaper than graph_boundary_s until measured"),
                     ("sms", "H200 datasheet"))

    # gpu_check micro row name -> (field, factor from the row's unit to the field's)
    _FROM_MICRO = {"gemm_bf16": ("bf16_flops", 1e12), "copy_bandwidth": ("copy_bytes_per_s", 1e12),
                   "l2_bandwidth": ("l2_bytes_per_s", 1e12), "launch_cost_wide": ("launch_s", 1e-6),
                   "aten_op_cost": ("aten_op_s", 1e-6), "view_op_cost": ("view_op_s", 1e-6),
                   "label_check_cost": ("label_check_s", 1e-6),
                   "l2_latency": ("l2_latency_s", 1e-6),
                   "graph_boundary": ("graph_boundary_s", 1e-6), "barrier_round_trip": ("barrier_s", 1e-6),
                   "pdl_graph_boundary": ("pdl_boundary_s", 1e-6)}

    def from_gpu_check(self, rows, run: str = "GPU run") -> "Ceilings":
        """These ceilings with every figure a GPU run measured (its ``micro`` rows) put in."""
        changes, source = {}, dict(self.source)
        for row in rows:
            target = self._FROM_MICRO.get(row.get("name")) if row.get("section") == "micro" else None
            if target and row.get("status") == "ok" and isinstance(row.get("value"), (int, float)) \
                    and row["value"] > 0 and not row.get("dry_run"):
                changes[target[0]] = row["value"] * target[1]
                source[target[0]] = f"measured: {run}"
            if row.get("section") == "env" and row.get("sms"):
                changes["sms"], source["sms"] = int(row["sms"]), f"measured: {run}"
        return replace(self, **changes, source=tuple(source.items()))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "source"} | \
            {"source": dict(self.source)}


H200 = Ceilings()

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class Cost:
    flops: float
    bytes: float
    compute_floor_s: float
    memory_floor_s: float

    @property
    def floor_s(self) -> float:
        return max(self.compute_floor_s, self.memory_floor_s)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_floor_s >= self.memory_floor_s else "memory"

    def to_dict(self) -> dict:
        return dict(asdict(self), floor_s=self.floor_s, bound=self.bound)


def inference_matmuls(cfg: SeDAConfig) -> list[tuple[str, int, int, int]]:
    """Every matmul of one inference call as ``(name, N, K, count)``: ``Y [B, N] = X [B, K] W^T``,
    ``count`` times per call."""
    d, H, L, C, Dv = cfg.dim, cfg.hidden, cfg.layers, cfg.num_classes, cfg.visual_dim
    rows = [("projector W_v", d, Dv, 1), ("learner c W_c", H, d, 1), ("translator c W_c", H, d, 1)]
    for stage, K in (("learner", cfg.learner_steps), ("translator", cfg.translator_steps)):
        rows += [(f"{stage} W_x", H, d, K), (f"{stage} W_l", H, H, K * (L - 1)), (f"{stage} W_o", d, H, K)]
    K2 = cfg.translator_steps
    rows += [("PFIN W_pm", H, d, K2), ("PFIN W_pu", H, d, K2), ("PFIN W_pd", d, H, K2),
             ("PFIN W_gm", d, d, K2), ("PFIN W_gu", d, d, K2), ("head", C, d, 1)]
    return [r for r in rows if r[3] > 0]


def inference_flops(cfg: SeDAConfig, batch: int) -> float:
    """Matmul FLOPs of one inference call."""
    return 2.0 * batch * sum(N * K * count for _, N, K, count in inference_matmuls(cfg))


def weight_count(cfg: SeDAConfig) -> int:
    """Parameters the inference chain reads (time MLPs excluded: their tables are cached)."""
    d, H, L, C, Dv = cfg.dim, cfg.hidden, cfg.layers, cfg.num_classes, cfg.visual_dim
    projector = Dv * d + 3 * d                                   # W_v, b_v, LayerNorm weight and bias
    denoiser = 2 * d * H + H + (L - 1) * (H * H + H) + H * d + d  # W_x, W_c + b_a, residual, W_o + b_o
    pfin = 2 * d * H + H + H * d + d + 2 * d * d + d
    head = d * C + C
    return projector + 2 * denoiser + pfin + head


def inference_bytes(cfg: SeDAConfig, batch: int, dtype: str = "bfloat16") -> float:
    """Minimum HBM traffic of one inference call with parameters/inputs/outputs in ``dtype``."""
    e = _DTYPE_BYTES[dtype]
    tables = 4 * (cfg.learner_steps + cfg.translator_steps) * (cfg.hidden + 2)
    io = batch * (cfg.visual_dim + cfg.num_classes + 2 * cfg.dim) * e
    return float(weight_count(cfg) * e + tables + io)


def inference_cost(cfg: SeDAConfig, batch: int, dtype: str = "bfloat16", ceilings: Ceilings = H200) -> Cost:
    """FLOPs, bytes and the time floor of one inference call at ``ceilings`` (default: the H200's)."""
    flops = inference_flops(cfg, batch)
    nbytes = inference_bytes(cfg, batch, dtype)
    return Cost(flops, nbytes, flops / ceilings.bf16_flops, nbytes / ceilings.copy_bytes_per_s)


@dataclass(frozen=True)
class Prediction:
    """Predicted time of one call of an implementation: ``time_s`` and the term that sets it
    (``bound``), with every term in seconds and the counts behind them."""
    impl: str
    batch: int
    time_s: float
    bound: str
    terms: dict
    counts: dict


def rowblock_inference(cfg: SeDAConfig, batch: int, dtype: str = "bfloat16", ceilings: Ceilings = H200) -> Prediction:
    """The row-block fused inference (``kernels/semantic_sampler.py`` + ``translator_pfin.py``), counted
    from the tiles its launchers pick (:func:`seda_fast.kernels.pick_blocks`).

    A program owns ``BM`` rows and runs the whole chain. Each matmul of :func:`inference_matmuls`
    (``blk.matmul_tile`` over ``BN``-column output tiles and ``BK``-wide K chunks) pulls, per
    program, the whole weight ``N K`` (model dtype) and, once per output tile, its ``rows x K``
    activation block from the fp32 scratch slab (the projector's from ``visual``, model dtype):
    ``ceil(N / BN) rows K`` values. Terms: L2 -> SM (each SM at ``l2_per_sm_bytes_per_s``, waves of
    ``sms`` programs, and the aggregate ``l2_bytes_per_s``), compute (the dtype's peak on the
    ``min(programs, sms)`` busy SMs; optimistic for 16-row tiles, whose mma.sync does not reach the
    wgmma peak), HBM (:func:`inference_bytes`), plus two launches from Python. The time is the
    largest of compute, L2 and HBM, plus the launches."""
    import torch

    from ..kernels import pick_blocks
    e = _DTYPE_BYTES[dtype]
    d, H, Dv = cfg.dim, cfg.hidden, cfg.visual_dim
    blocks = [pick_blocks(batch, d, H, Dv, getattr(torch, dtype)), pick_blocks(batch, d, H, None, getattr(torch, dtype))]
    BM, BN = blocks[0].BM, blocks[0].BN  # both kernels pick the same BM and BN for one batch
    assert all(b.BM == BM and b.BN == BN for b in blocks)
    rows = min(BM, batch)
    per_program = 0.0
    for name, N, K, count in inference_matmuls(cfg):
        act_bytes = e if name == "projector W_v" else 4
        per_program += count * (N * K * e + math.ceil(N / BN) * rows * K * act_bytes)
    programs = math.ceil(batch / BM)
    busy = min(programs, ceilings.sms)
    waves = math.ceil(programs / ceilings.sms)
    peak = ceilings.bf16_flops if dtype != "float32" else ceilings.fp32_flops
    terms = {
        "compute": inference_flops(cfg, batch) / (peak * busy / ceilings.sms),
        "L2": max(waves * per_program / ceilings.l2_per_sm_bytes_per_s,
                  programs * per_program / ceilings.l2_bytes_per_s),
        "HBM": inference_bytes(cfg, batch, dtype) / ceilings.copy_bytes_per_s,
    }
    bound = max(terms, key=terms.get)
    terms["launch"] = 2 * ceilings.launch_s
    return Prediction("rowblock", batch, terms[bound] + terms["launch"], bound, terms,
                      {"programs": programs, "BM": BM, "BN": BN, "l2_bytes_per_program": per_program,
                       "l2_bytes_total": programs * per_program})


def prediction_table(cfg: SeDAConfig, batches=(1, 64, 1024, 16384), dtype: str = "bfloat16",
                     ceilings: Ceilings = H200) -> str:
    """Markdown: per batch, the floor (:func:`inference_cost`) and the row-block prediction."""
    lines = [f"ceilings: {', '.join(f'{k} {v:.3g}' for k, v in ceilings.to_dict().items() if k != 'source')}",
             "", "| B | floor ms | floor bound | rowblock ms | rowblock bound | programs | L2->SM MiB per program |",
             "|---:|---:|---|---:|---|---:|---:|"]
    for b in batches:
        c, p = inference_cost(cfg, b, dtype, ceilings), rowblock_inference(cfg, b, dtype, ceilings)
        lines.append(f"| {b} | {c.floor_s * 1e3:.3f} | {c.bound} | {p.time_s * 1e3:.3f} | {p.bound} "
                     f"| {p.counts['programs']} | {p.counts['l2_bytes_per_program'] / 2**20:.1f} |")
    return "\n".join(lines)


def comparison(cfg: SeDAConfig, batches=(1, 64, 1024, 16384), dtype: str = "bfloat16",
               ceilings: Ceilings = H200) -> list[dict]:
    """Per batch and implementation (the fused ones and the unfused baselines): predicted seconds
    and the term that bounds it."""
    from . import cost_baselines, cost_phases
    rows = []
    for b in batches:
        c = inference_cost(cfg, b, dtype, ceilings)
        rows.append({"batch": b, "impl": "floor", "time_s": c.floor_s, "bound": c.bound})
        p = rowblock_inference(cfg, b, dtype, ceilings)
        rows.append({"batch": b, "impl": "rowblock", "time_s": p.time_s, "bound": p.bound})
        for impl in cost_phases.IMPLS:
            p = cost_phases.predict(cfg, b, impl, dtype, ceilings)
            rows.append({"batch": b, "impl": impl, "time_s": p.time_s, "bound": max(p.terms, key=p.terms.get)})
        for impl in cost_baselines.IMPLS:
            p = cost_baselines.predict(cfg, b, impl, dtype, ceilings)
            rows.append({"batch": b, "impl": impl, "time_s": p.time_s, "bound": p.bound})
    return rows


def comparison_table(rows: list[dict]) -> str:
    """Markdown: one row per batch, one column per implementation (predicted ms, bound)."""
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    lines = ["| B | " + " | ".join(impls) + " |", "|---:|" + "---:|" * len(impls)]
    for b in dict.fromkeys(r["batch"] for r in rows):
        cells = {r["impl"]: f"{r['time_s'] * 1e3:.3f} ({r['bound']})" for r in rows if r["batch"] == b}
        lines.append(f"| {b} | " + " | ".join(cells[i] for i in impls) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python -m seda_fast cost-model``: the floor, the row-block and phase-schedule predictions and
    the unfused baselines at the default config."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m seda_fast cost-model",
                                     description="FLOPs, bytes and time floor of one inference call, and every "
                                                 "fused implementation's and baseline's predicted time and bound, "
                                                 "at the default config and the H200's ceilings")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(_DTYPE_BYTES))
    args = parser.parse_args(argv)
    from ..presets import config
    from . import cost_phases
    cfg = config("default")
    for b in (1, 64, 1024, 16384):
        c = inference_cost(cfg, b, args.dtype)
        print(f"B={b:6d}  {c.flops / 1e9:9.2f} GFLOP  {c.bytes / 1e6:7.2f} MB  floor {c.floor_s * 1e6:8.2f} us ({c.bound})")
    print()
    print(prediction_table(cfg, dtype=args.dtype))
    print()
    print(cost_phases.prediction_table(cfg, dtype=args.dtype))
    print()
    print("Predicted ms per call (bound): phases = graph replay, phases-raw = one Python launch per phase")
    print()
    print(comparison_table(comparison(cfg, dtype=args.dtype)))
    return 0


if __name__ == "__main__":  # pragma: no cover - a quick table
    import sys
    sys.exit(main())
