"""Inference throughput: eager vs CUDA graph vs torch.compile vs fused Triton (pytest-benchmark).

    .venv/bin/python -m pytest benchmarks/bench_inference.py --benchmark-json=seda_fast_out/inference.json
    .venv/bin/python -m seda_fast bench report seda_fast_out/inference.json

``extra_info`` of each row: median/p20/p80 ms of pytest-benchmark's own samples, TFLOP/s, GB/s, time over the cost-model
floor, peak MB, max error vs the fp32 eager reference, NVML readings; speedups over every
baseline are added to the JSON at the end of the session (benchmarks/conftest.py).
"""
import pytest
import torch

from seda_fast.tools import bench
from seda_fast import reference

from _common import INFER_CASES, model_for, run_benchmark, throughput


@pytest.mark.parametrize("provider", bench.PROVIDERS)
@pytest.mark.parametrize("config,dtype,batch", INFER_CASES)
def test_inference(benchmark, device, nvml, provider, config, dtype, batch):
    model = model_for(config, dtype, device)
    torch.manual_seed(1)
    visual = torch.randn(batch, model.config.visual_dim, device=device).to(model.head.weight.dtype)
    try:
        fn = bench.inference_provider(provider, model, visual)
    except bench.ProviderUnavailable as why:
        pytest.skip(str(why))
    info = {"kind": "inference", "provider": provider, "config": config, "dtype": dtype, "batch": batch}
    ref_model = model_for(config, "float32", device)
    with torch.no_grad():
        out = fn() if provider != "cuda_graph" else None
        if out is not None:
            ref = reference.infer(ref_model, visual.float())
            info["max_err_vs_fp32"] = bench.max_error_vs_fp32(out, ref)
            assert all(torch.isfinite(o).all() for o in out)
    run_benchmark(benchmark, fn, nvml, batch, info)
    throughput(info, model.config, batch, dtype)
    benchmark.extra_info.update(info)
