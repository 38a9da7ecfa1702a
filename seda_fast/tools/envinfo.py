"""``python -m seda_fast env``: the environment report to paste into a bug report."""
from __future__ import annotations

import importlib.metadata as metadata
import platform
import sys

import torch

from .. import __version__
from .profiling import NVMLMonitor

_PACKAGES = ("torch", "triton", "numpy", "einops", "xformers", "nvidia-ml-py", "pytest-benchmark")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment_report() -> dict:
    """OS, Python, package versions (read from metadata: nothing is imported that might fail),
    CUDA/cuDNN as torch was built, and GPUs with the driver version when NVML answers."""
    report = {
        "seda_fast": __version__,
        "os": platform.platform(),
        "python": sys.version.split()[0],
        **{name: _version(name) for name in _PACKAGES},
        "torch_cuda": torch.version.cuda or "none (CPU build)",
        "cuda_available": torch.cuda.is_available(),
        "gpus": [],
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            cap = torch.cuda.get_device_capability(i)
            report["gpus"].append(f"{torch.cuda.get_device_name(i)} (sm_{cap[0]}{cap[1]})")
    nvml = NVMLMonitor()
    report["driver"] = nvml.device_info().get("driver", "unknown" if nvml.available else nvml.reason)
    return report


def format_report(report: dict | None = None) -> str:
    report = environment_report() if report is None else report
    width = max(len(k) for k in report)
    lines = []
    for key, value in report.items():
        if isinstance(value, list):
            value = ", ".join(value) if value else "none"
        lines.append(f"{key:<{width}}  {value}")
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python -m seda_fast env [--json]``."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m seda_fast env", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = environment_report()
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0
