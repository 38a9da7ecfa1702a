"""Profiling and environment report work, and degrade gracefully, on a CPU-only machine."""
import json
import sys

import torch

from seda_fast import nvtx
from seda_fast.tools import envinfo, profiling

from helpers import make_batch, make_model


def test_nvtx_range_is_a_no_op_without_cuda():
    with profiling.nvtx_range("seda/test"):
        x = torch.ones(3) * 2
    assert x.sum() == 6


def test_nvtx_range_survives_missing_nvtx(monkeypatch):
    monkeypatch.setattr(nvtx, "_nvtx_usable", lambda: True)

    def broken(_name):
        raise RuntimeError("NVTX library not found")

    monkeypatch.setattr(torch.cuda.nvtx, "range_push", broken)
    with profiling.nvtx_range("seda/test"):
        pass


def test_trace_writes_a_chrome_trace(tmp_path):
    model = make_model().eval()
    v, _, _ = make_batch(model.config, 3)
    path = tmp_path / "sub" / "trace.json"
    with profiling.trace(str(path)):
        with torch.no_grad():
            model(v)
    events = json.loads(path.read_text())["traceEvents"]
    assert any("aten::linear" in str(e.get("name")) for e in events)


def test_nvml_monitor_without_gpu_or_package(monkeypatch):
    monitor = profiling.NVMLMonitor()
    if not torch.cuda.is_available():
        assert not monitor.available and monitor.reason
        assert monitor.snapshot() == {} and monitor.device_info() == {}
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import of nvidia-ml-py fails
    missing = profiling.NVMLMonitor()
    assert not missing.available and "nvidia-ml-py" in missing.reason


def test_environment_report():
    report = envinfo.environment_report()
    for key in ("os", "python", "torch", "triton", "xformers", "nvidia-ml-py", "torch_cuda", "driver"):
        assert key in report
    assert report["torch"].startswith(torch.__version__.split("+")[0])
    text = envinfo.format_report(report)
    assert "python" in text and "torch_cuda" in text


def test_env_command_runs():
    import subprocess
    proc = subprocess.run([sys.executable, "-m", "seda_fast", "env", "--json"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["python"] == sys.version.split()[0]
    bad = subprocess.run([sys.executable, "-m", "seda_fast", "nope"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown command" in bad.stderr
