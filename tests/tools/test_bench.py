"""The benchmark suite writes the documented fields on CPU, and the report command renders them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from seda_fast.tools import bench

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "inference.json"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "benchmarks/bench_inference.py",
           "-k", "eager or triton or cuda_graph", "--benchmark-json", str(out),
           "--benchmark-min-rounds=1", "--benchmark-max-time=0.001", "--benchmark-warmup=off"]
    # a child of a pytest-xdist worker inherits PYTEST_XDIST_WORKER, and pytest-benchmark then disables
    # itself (no JSON): the child is a session of its own
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_")}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_json_has_the_documented_fields(results):
    data = json.loads(results.read_text())
    assert data["seda_fast_env"]["torch"] and "driver" in data["seda_fast_env"]
    rows = {(b["extra_info"]["provider"], b["extra_info"]["batch"]): b["extra_info"] for b in data["benchmarks"]}
    assert {p for p, _ in rows} == {"eager", "triton"}  # cuda_graph skips without CUDA
    for info in rows.values():
        for key in ("median_ms", "p20_ms", "p80_ms", "tflops", "gbps", "over_floor", "floor_ms",
                    "max_err_vs_fp32", "peak_memory_mb", "config", "dtype", "kind"):
            assert key in info, key
        assert info["p20_ms"] <= info["median_ms"] <= info["p80_ms"]
        assert info["max_err_vs_fp32"] < 1e-4
    for b in data["benchmarks"]:  # one source of truth: pytest-benchmark's own samples
        assert b["extra_info"]["timing_source"] == "pytest-benchmark"
        assert b["extra_info"]["median_ms"] == b["stats"]["median"] * 1e3
    for batch in (1, 3):
        triton = rows[("triton", batch)]
        assert triton["speedup_vs_eager"] == pytest.approx(rows[("eager", batch)]["median_ms"] / triton["median_ms"])


def test_report_renders_table_and_pngs(results, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "seda_fast.tools.bench", "report", str(results), "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "| inference | tiny | float32 | 3 | triton |" in proc.stdout
    for name in ("speedup.png", "roofline.png"):
        png = tmp_path / name
        assert png.stat().st_size > 5000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "inference.md").read_text().startswith(proc.stdout.splitlines()[0])
    data = json.loads(results.read_text())
    for b in data["benchmarks"]:
        info = b["extra_info"]
        cells = (f"| {info['kind']} | tiny | float32 | {info['batch']} | {info['provider']} "
                 f"| {b['stats']['median'] * 1e3:.4g} | {info['p20_ms']:.3g}-{info['p80_ms']:.3g} |")
        assert cells in proc.stdout, cells


def test_report_writes_to_a_user_folder_unless_asked_for_the_reference(results, tmp_path, monkeypatch):
    """By default the report goes to ./seda_fast_out, not next to the JSON (a committed reference);
    --update-reference writes to the reference folder."""
    from seda_fast import outputs
    before = sorted(results.parent.iterdir())
    proc = subprocess.run([sys.executable, "-m", "seda_fast", "bench", "report", str(results)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(results.parent.iterdir()) == before
    assert {p.name for p in (tmp_path / "seda_fast_out").iterdir()} == {"inference.md", "speedup.png", "roofline.png"}
    ref = tmp_path / "reference"
    ref.mkdir()
    monkeypatch.setattr(outputs, "REFERENCE_DIR", ref)
    assert bench.main(["report", str(results), "--update-reference"]) == 0
    assert {p.name for p in ref.iterdir()} == {"inference.md", "speedup.png", "roofline.png"}


def test_error_bars_span_the_p20_p80_times():
    row = {"median_ms": 2.0, "p20_ms": 1.5, "p80_ms": 4.0, "speedup_vs_eager": 3.0, "over_floor": 10.0}
    assert bench._spread(row, "speedup_vs_eager") == pytest.approx((1.5, 4.0))
    assert bench._spread(row, "over_floor") == pytest.approx((7.5, 20.0))
    assert bench._spread({"median_ms": 2.0, "over_floor": 1.0}, "over_floor") is None
    # one sample (p20 = median = p80) where value * t / t rounds below value: no negative error bar
    t, value = 1.2642690417503528, 6.5669372305073
    assert value * t / t < value
    low, high = bench._spread({"median_ms": t, "p20_ms": t, "p80_ms": t, "over_floor": value}, "over_floor")
    assert low <= value <= high


def test_report_rejects_other_json(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    assert bench.main(["report", str(bad)]) == 2
