"""pytest-benchmark suite set-up. On a CPU-only machine the fused kernels run in Triton's
interpreter (the mode is fixed at decoration time, so it is set before seda_fast is imported),
at tiny sizes: every benchmark runs once in CI with --benchmark-disable so none can rot."""
import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from seda_fast.tools import bench  # noqa: E402
from seda_fast.tools.profiling import NVMLMonitor  # noqa: E402


@pytest.fixture(scope="session")
def device():
    return torch.device("cuda" if CUDA else "cpu")


@pytest.fixture(scope="session")
def nvml():
    return NVMLMonitor(torch.cuda.current_device() if CUDA else 0)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Add cross-provider speedups (same kind/config/dtype/batch) and the environment report."""
    rows = [b["extra_info"] for b in output_json.get("benchmarks", []) if "provider" in b.get("extra_info", {})]
    bench.add_speedups(rows)
    output_json["seda_fast_env"] = bench.machine_info()
