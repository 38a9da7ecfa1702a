"""Cost model of one inference call ``visual [B, Dv] -> (logits, s, m)`` (SPEC "Inference").

FLOPs count the matmuls (2 per multiply-add); the elementwise work (SiLU, sigmoid, LayerNorm, DDIM
and gate updates) is O(B (H + d)) per step, well under 1% at the default sizes, and is left out.
The time MLP is not counted: its ``[K, H]`` tables depend only on the weights and are cached.

Minimum HBM bytes: every weight the chain uses read once, the two fp32 tables (``[K, H]`` time
embeddings + ``[K, 2]`` DDIM) per stage, the input ``visual`` read once and the three outputs written
once; nothing else has to leave the chip (the fused kernels keep activations on chip / in L2).

Floor: ``max(FLOPs / peak, bytes / bandwidth)`` at the H100 ceilings measured here, bf16 dense
tensor cores ~790 TFLOP/s and copy bandwidth ~3.0 TB/s.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .config import SeDAConfig

H100_BF16_FLOPS = 790e12
H100_COPY_BYTES_PER_S = 3.0e12

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


def inference_cost(cfg: SeDAConfig, batch: int, dtype: str = "bfloat16",
                   peak_flops: float = H100_BF16_FLOPS, bandwidth: float = H100_COPY_BYTES_PER_S) -> Cost:
    """FLOPs, bytes and the time floor of one inference call (default: H100 bf16 ceilings)."""
    flops = inference_flops(cfg, batch)
    nbytes = inference_bytes(cfg, batch, dtype)
    return Cost(flops, nbytes, flops / peak_flops, nbytes / bandwidth)


def main(argv=None) -> int:
    """``python -m seda_fast cost-model``: a quick table at the default config."""
    import argparse
    argparse.ArgumentParser(prog="python -m seda_fast cost-model",
                            description="FLOPs, bytes and time floor of one inference call at the default config "
                                        "(bf16, H100 ceilings)").parse_args(argv)
    cfg = SeDAConfig(visual_dim=1280, text_dim=384, num_classes=10)
    for b in (1, 64, 1024, 16384):
        c = inference_cost(cfg, b)
        print(f"B={b:6d}  {c.flops / 1e9:9.2f} GFLOP  {c.bytes / 1e6:7.2f} MB  floor {c.floor_s * 1e6:8.2f} us ({c.bound})")
    return 0


if __name__ == "__main__":  # pragma: no cover - a quick table
    main()
