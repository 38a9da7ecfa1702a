"""Profiling helpers that degrade gracefully without a GPU.

* :func:`nvtx_range` - an NVTX range on CUDA builds with a GPU; a no-op otherwise (and while
  torch.compile traces). It lives in :mod:`seda_fast.nvtx` so the model can mark its calls.
* :func:`trace` - record a ``torch.profiler`` chrome trace of the enclosed steps.
* :class:`NVMLMonitor` - read-only NVML telemetry (power, energy, memory, SM clock,
  utilisation) through nvidia-ml-py; ``available`` is False when NVML or a GPU is missing.
  It never changes clocks, power limits or modes.
"""
from __future__ import annotations

import contextlib
import os

import torch

from ..nvtx import nvtx_range  # noqa: F401  (re-exported: profiling's public helper)


@contextlib.contextmanager
def trace(path: str, record_shapes: bool = True):
    """Record a torch.profiler trace of the enclosed block and write it as a chrome trace
    (open in chrome://tracing or Perfetto). CUDA activity is recorded when a GPU is present.

    >>> with trace("infer.json"):
    ...     for _ in range(5):
    ...         model(x)
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with profile(activities=activities, record_shapes=record_shapes) as prof:
        yield prof
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    prof.export_chrome_trace(path)


class NVMLMonitor:
    """Read-only NVML telemetry of one GPU. ``NVMLMonitor(index).snapshot()`` -> dict with
    ``power_w, memory_used_mb, sm_clock_mhz, gpu_util_pct, energy_mj`` (absent keys where the
    GPU/driver does not report them). ``available`` is False without nvidia-ml-py or a GPU."""

    def __init__(self, index: int = 0):
        self.available = False
        self.reason = ""
        self._nvml = None
        self._handle = None
        try:
            import pynvml  # provided by nvidia-ml-py
        except Exception as err:  # package missing
            self.reason = f"nvidia-ml-py not importable: {err}"
            return
        try:
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception as err:  # no driver / no GPU
            self.reason = f"NVML unavailable: {err}"
            return
        self._nvml = pynvml
        self.available = True

    def _read(self, fn, *args):
        try:
            return fn(self._handle, *args)
        except Exception:
            return None

    def snapshot(self) -> dict:
        if not self.available:
            return {}
        nv = self._nvml
        out = {}
        power = self._read(nv.nvmlDeviceGetPowerUsage)
        if power is not None:
            out["power_w"] = power / 1000.0
        mem = self._read(nv.nvmlDeviceGetMemoryInfo)
        if mem is not None:
            out["memory_used_mb"] = mem.used / 2**20
        clock = self._read(nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_SM)
        if clock is not None:
            out["sm_clock_mhz"] = clock
        util = self._read(nv.nvmlDeviceGetUtilizationRates)
        if util is not None:
            out["gpu_util_pct"] = util.gpu
        energy = self._read(nv.nvmlDeviceGetTotalEnergyConsumption)
        if energy is not None:
            out["energy_mj"] = energy
        return out

    def device_info(self) -> dict:
        if not self.available:
            return {}
        nv = self._nvml
        info = {}
        name = self._read(nv.nvmlDeviceGetName)
        if name is not None:
            info["gpu"] = name.decode() if isinstance(name, bytes) else name
        try:
            driver = nv.nvmlSystemGetDriverVersion()
            info["driver"] = driver.decode() if isinstance(driver, bytes) else driver
        except Exception:
            pass
        return info
