"""Cost model of one inference call ``visual [B, Dv] -> (logits, s, m)`` (SPEC "Inference").

FLOPs count the matmuls (2 per multiply-add); the elementwise work (SiLU, sigmoid, LayerNorm, DDIM
and gate updates) is O(B (H + d)) per step, well under 1% at the default sizes, and is left out.
The time MLP is not counted: its ``[K, H]`` tables depend only on the weights and are cached.

Minimum HBM bytes: every weight the chain uses read once, the two fp32 tables (``[K, H]`` time
embeddings + ``[K, 2]`` DDIM) per stage, the input ``visual`` read once and the three outputs written
once; nothing else has to leave the chip (the fused kernels keep activations on chip / in L2).

Floor: ``max(FLOPs / peak, bytes / bandwidth)`` at the lent H200's ceilings (:class:`Ceilings`):
bf16 dense tensor cores ~790 TFLOP/s and copy bandwidth ~4.3 TB/s (read + write), both measured on
that machine. The other ceilings (L2, sync costs) are stated assumptions until a GPU run
(``benchmarks/gpu_check.py``) measures them; :meth:`Ceilings.from_gpu_check` takes its figures.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from .config import SeDAConfig


@dataclass(frozen=True)
class Ceilings:
    """Device ceilings the cost model divides by. Defaults: the lent H200 (sm_90a, 132 SMs).

    ``source`` says, per field, where the figure comes from: ``"measured on the H200"`` (bf16
    matmul 769-798 TFLOP/s at 8192^3, device copy ~4.3 TB/s read + write), ``"assumed"`` (L2
    aggregate ~10 TB/s as published GPU microbenchmarks show; per-SM L2 ~115 GB/s; sync costs), or
    ``"measured: <run>"`` once :meth:`from_gpu_check` has replaced it."""
    bf16_flops: float = 790e12          # dense bf16 tensor-core FLOP/s
    copy_bytes_per_s: float = 4.3e12    # HBM device-to-device copy, bytes read + written per second
    l2_bytes_per_s: float = 10e12       # L2 -> SMs, aggregate
    l2_per_sm_bytes_per_s: float = 115e9
    launch_s: float = 20e-6             # one Triton launch from Python
    graph_boundary_s: float = 1.3e-6    # one kernel boundary inside a CUDA graph
    barrier_s: float = 1e-6             # one grid barrier in a persistent kernel
    sms: int = 132
    source: tuple = (("bf16_flops", "measured on the H200"), ("copy_bytes_per_s", "measured on the H200"),
                     ("l2_bytes_per_s", "assumed"), ("l2_per_sm_bytes_per_s", "assumed"),
                     ("launch_s", "assumed"), ("graph_boundary_s", "assumed"), ("barrier_s", "assumed"),
                     ("sms", "H200 datasheet"))

    # gpu_check micro row name -> (field, factor from the row's unit to the field's)
    _FROM_MICRO = {"gemm_bf16": ("bf16_flops", 1e12), "copy_bandwidth": ("copy_bytes_per_s", 1e12),
                   "l2_bandwidth": ("l2_bytes_per_s", 1e12), "launch_cost": ("launch_s", 1e-6),
                   "graph_boundary": ("graph_boundary_s", 1e-6), "barrier_round_trip": ("barrier_s", 1e-6)}

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


def inference_flops(cfg: SeDAConfig, batch: int) -> float:
    """Matmul FLOPs of one inference call."""
    d, H, L, C, Dv = cfg.dim, cfg.hidden, cfg.layers, cfg.num_classes, cfg.visual_dim
    denoiser_step = d * H + (L - 1) * H * H + H * d            # W_x, residual layers, W_o
    pfin_step = 2 * d * H + H * d + 2 * d * d                   # W_pm + W_pu, W_pd, W_gm + W_gu
    macs = (Dv * d                                              # projector
            + 2 * d * H                                         # c W_c, once per stage
            + cfg.learner_steps * denoiser_step
            + cfg.translator_steps * (denoiser_step + pfin_step)
            + d * C)                                            # head
    return 2.0 * batch * macs


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


if __name__ == "__main__":  # pragma: no cover - a quick table
    from .presets import config
    cfg = config("default")
    for b in (1, 64, 1024, 16384):
        c = inference_cost(cfg, b)
        print(f"B={b:6d}  {c.flops / 1e9:9.2f} GFLOP  {c.bytes / 1e6:7.2f} MB  floor {c.floor_s * 1e6:8.2f} us ({c.bound})")
