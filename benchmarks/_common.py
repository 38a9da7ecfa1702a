"""Shapes and measurement shared by the benchmark files (GPU sweep vs tiny CPU smoke sizes)."""
import os

import torch

import seda_fast as sf
from seda_fast import bench, cost_model, presets

CUDA = torch.cuda.is_available()
FULL = os.environ.get("SEDA_BENCH_FULL") == "1"  # GPU: add the small config and fp32 everywhere

CONFIGS = {
    "default": presets.DEFAULT,
    "small": dict(visual_dim=1280, text_dim=384, num_classes=10, dim=128, hidden=256),
    "tiny": presets.TINY,
}
if CUDA:
    INFER_CASES = [(c, dt, b) for c in (("default", "small") if FULL else ("default",))
                   for dt in ("bfloat16", "float32") for b in (1, 64, 1024, 16384)]
    TRAIN_CASES = [("default", "bfloat16", b) for b in (256, 4096)]
    WARMUP, ITERS = 5, 30
else:
    INFER_CASES = [("tiny", "float32", b) for b in (1, 3)]
    TRAIN_CASES = [("tiny", "float32", 4)]
    WARMUP, ITERS = 1, 2

_MODELS = {}


def model_for(config: str, dtype: str, device) -> sf.SeDA:
    """A seeded eval-mode model, cached per (config, dtype): all providers time the same weights."""
    key = (config, dtype)
    if key not in _MODELS:
        torch.manual_seed(0)
        _MODELS[key] = sf.SeDA(sf.SeDAConfig(**CONFIGS[config])).to(device=device, dtype=getattr(torch, dtype)).eval()
    return _MODELS[key]


def measure(fn, nvml, batch: int) -> dict:
    """Device-time stats of ``fn`` plus NVML readings and peak memory where available."""
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    before = nvml.snapshot()
    samples = bench.device_times(fn, WARMUP, ITERS, CUDA)
    after = nvml.snapshot()
    out = bench.summarize(samples)
    out["device"] = torch.cuda.get_device_name() if CUDA else "cpu (Triton interpreter; not a GPU figure)"
    out["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20 if CUDA else None
    if after:
        out.update({f"nvml_{k}": v for k, v in after.items() if k != "energy_mj"})
        if "energy_mj" in before and "energy_mj" in after:
            joules = (after["energy_mj"] - before["energy_mj"]) / 1e3
            out["energy_j_per_1k_samples"] = joules / (ITERS * batch) * 1e3
    return out


def throughput(info: dict, cfg, batch: int, dtype: str) -> None:
    """Achieved TFLOP/s, GB/s and time over the cost model's floor, from the median time."""
    cost = cost_model.inference_cost(cfg, batch, dtype)
    seconds = info["median_ms"] * 1e-3
    info.update(tflops=cost.flops / seconds / 1e12, gbps=cost.bytes / seconds / 1e9,
                floor_ms=cost.floor_s * 1e3, over_floor=seconds / cost.floor_s)
