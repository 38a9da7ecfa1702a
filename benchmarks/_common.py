"""Shapes and measurement shared by the benchmark files (GPU sweep vs tiny CPU smoke sizes)."""
import os

import torch

import seda_fast as sf
from seda_fast.tools import bench, cost_model
from seda_fast import presets

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
else:
    INFER_CASES = [("tiny", "float32", b) for b in (1, 3)]
    TRAIN_CASES = [("tiny", "float32", 4)]

_MODELS = {}


def model_for(config: str, dtype: str, device) -> sf.SeDA:
    """A seeded eval-mode model, cached per (config, dtype): all providers time the same weights."""
    key = (config, dtype)
    if key not in _MODELS:
        torch.manual_seed(0)
        _MODELS[key] = sf.SeDA(sf.SeDAConfig(**CONFIGS[config])).to(device=device, dtype=getattr(torch, dtype)).eval()
    return _MODELS[key]


def run_benchmark(benchmark, fn, nvml, batch: int, info: dict) -> dict:
    """Time ``fn`` with pytest-benchmark, the one source of the timings: ``info`` (the row's
    ``extra_info``) gets median/p20/p80 ms of pytest-benchmark's own samples (none under
    ``--benchmark-disable``, which calls ``fn`` once), peak memory and NVML readings over the same
    calls. The timed callable synchronises the device."""
    calls = [0]
    sync = torch.cuda.synchronize if CUDA else (lambda: None)

    def timed():
        calls[0] += 1
        fn()
        sync()

    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    before = nvml.snapshot()
    benchmark(timed)
    after = nvml.snapshot()
    info["device"] = torch.cuda.get_device_name() if CUDA else "cpu (Triton interpreter; not a GPU figure)"
    info["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20 if CUDA else None
    if benchmark.stats is not None:
        info.update(bench.benchmark_timing(benchmark.stats.stats.data))
    if after:
        info.update({f"nvml_{k}": v for k, v in after.items() if k != "energy_mj"})
        if "energy_mj" in before and "energy_mj" in after:
            joules = (after["energy_mj"] - before["energy_mj"]) / 1e3
            info["energy_j_per_1k_samples"] = joules / (calls[0] * batch) * 1e3
    benchmark.extra_info.update(info)
    return info


def throughput(info: dict, cfg, batch: int, dtype: str) -> None:
    """The cost model's floor and, when the row was timed, achieved TFLOP/s, GB/s and time over the
    floor from the median time."""
    cost = cost_model.inference_cost(cfg, batch, dtype)
    info["floor_ms"] = cost.floor_s * 1e3
    if info.get("median_ms"):
        seconds = info["median_ms"] * 1e-3
        info.update(tflops=cost.flops / seconds / 1e12, gbps=cost.bytes / seconds / 1e9,
                    over_floor=seconds / cost.floor_s)
