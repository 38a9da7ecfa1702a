"""benchmarks/gpu_check.py on CPU (``--dry-run``: Triton interpreter, tiny config): the JSON is valid
after every row, a hung provider costs its job alone, the budget stops new work, and the report
reads the result."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seda_fast.ops.runtime import kernels
from seda_fast.tools import cost_model

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(tmp_path, *args, env=None, timeout=600):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", str(out), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ, **(env or {})))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), proc.stdout


def _by(doc, **match):
    return [r for r in doc["rows"] if all(r.get(k) == v for k, v in match.items())]


def test_dry_run_end_to_end_and_report(tmp_path):
    doc, stdout = _run(tmp_path)
    assert doc["status"] == "complete" and doc["kind"] == "seda_fast.gpu_check"
    assert all(r["status"] in ("ok", "skipped") for r in doc["rows"]), [r for r in doc["rows"] if r["status"] not in
                                                                       ("ok", "skipped")]
    assert len(stdout.strip().splitlines()) == len(doc["rows"]) + 1  # one line per row, then the summary
    env = _by(doc, section="env")[0]
    assert env["versions"]["torch"] and env["status"] == "ok"
    micro = {r["name"]: r for r in _by(doc, section="micro")}
    for name in ("gemm_bf16", "copy_bandwidth", "l2_bandwidth", "launch_cost", "launch_cost_wide", "aten_op_cost", "view_op_cost",
                 "label_check_cost", "l2_latency",
                 "barrier_round_trip"):
        assert micro[name]["status"] == "ok" and micro[name]["value"] > 0, micro[name]
    assert micro["barrier_round_trip"]["counter_ok"]  # the barrier's code ran on a one-program grid
    assert micro["graph_boundary"]["status"] == micro["pdl"]["status"] == "skipped"
    assert micro["pdl_graph_boundary"]["status"] == "skipped"
    infer = _by(doc, section="inference", status="ok")
    assert {(r["provider"], r["batch"]) for r in infer} == {(p, b) for p in ("eager", "fused:rowblock", "fused:phases")
                                                              for b in (1, 3)}
    for r in infer:  # fp32: every provider against the fp32 eager reference
        assert r["median_ms"] > 0 and r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        assert r["max_abs_err_vs_fp32"] < 1e-5 and r["rel_err_logits_vs_fp32"] < 1e-5
    train = _by(doc, section="training", status="ok")
    assert {(r["provider"], r["stage"]) for r in train} == {
        (p, s) for p in ("eager", "fused", "fused_stepgraph", "fused-raw", "fused-rowblock")
        for s in (1, 2)} | {("fused-recompute", 2)}  # stage 2 only
    for r in _by(doc, section="training", provider="fused_stepgraph"):  # on CPU StepGraph runs every call directly
        assert r["step_graph"]["direct"] > 0 and r["step_graph"]["captures"] == r["step_graph"]["replays"] == 0
    assert {r["unroll"] for r in train if r["provider"] != "eager"} == {"phases", "rowblock"}
    for provider in ("fused_graph", "fused-recompute_graph", "fused-rowblock_graph"):  # CUDA only
        assert {r["status"] for r in _by(doc, section="training", provider=provider)} == {"skipped"}, provider
    for r in train:
        assert r["median_ms"] > 0 and r["peak_mb"] > 0
        assert r["loss_rel_err_vs_fp32"] < 1e-5 and r["max_grad_rel_err_vs_fp32"] < 1e-4
    assert _by(doc, section="tests")[0]["status"] == "ok"

    report_dir = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "seda_fast.tools.bench", "report", str(tmp_path / "out" / "gpu_check.json"),
                           "--out", str(report_dir)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (report_dir / "gpu_check.md").read_text()
    assert "dry run" in text and "fused:rowblock" in text and "## Training steps" in text
    for name in cost_model.Ceilings._FROM_MICRO:  # every figure that replaces an assumption has its row
        assert f"| {name} |" in text, name
    assert (report_dir / "gpu_check_inference.png").stat().st_size > 0


def test_killed_run_leaves_valid_json(tmp_path):
    out = tmp_path / "out"
    path = out / "gpu_check.json"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--dry-run", str(out)], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows, deadline = [], time.monotonic() + 300
    try:
        while time.monotonic() < deadline and len(rows) < 3:
            time.sleep(0.2)
            if path.exists():
                rows = json.loads(path.read_text())["rows"]  # valid at every moment: written atomically
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    doc = json.loads(path.read_text())
    assert doc["status"] == "running" and len(doc["rows"]) >= 3
    assert doc["rows"][0]["section"] == "env" and doc["rows"][1]["section"] == "micro"


@pytest.mark.parametrize("budget,later_runs", [(1000, True), (12, False)], ids=["budget-left", "budget-spent"])
def test_hung_provider_costs_its_job_alone(tmp_path, budget, later_runs):
    """The test-only switch hangs the fused provider: its job times out and is recorded; the next job
    runs while budget is left, and is skipped once the hang has spent it."""
    doc, _ = _run(tmp_path, "--only", "infer-fused,train-eager", "--job-timeout", "25", "--budget-s", str(budget),
                  env={"SEDA_GPU_CHECK_HANG": "fused:rowblock"})
    assert doc["status"] == "complete"
    hung = _by(doc, job="infer-fused-rowblock-float32-B1-3")
    assert [r["status"] for r in hung] == ["timeout"] and "killed" in hung[0]["error"]
    train = _by(doc, job="train-eager")
    if later_runs:
        assert [r["status"] for r in train] == ["ok", "ok"]
    else:
        assert [r["status"] for r in train] == ["skipped"] and "budget" in train[0]["reason"]


def test_zero_budget_starts_nothing(tmp_path):
    doc, _ = _run(tmp_path, "--budget-s", "0")
    assert doc["plan"] and [r["job"] for r in doc["rows"]] == doc["plan"]
    assert {r["status"] for r in doc["rows"]} == {"skipped"}


def test_micro_kernels_compile_for_sm90a():
    """The GPU run's own Triton kernels (grid barrier, PDL chain, L2 reader, empty kernel) compile
    for sm_90a with no local memory and the instructions they exist for (read in the PTX)."""
    code = "import json, gpu_micro; print(json.dumps(gpu_micro.compile_check()))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "benchmarks", capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, TRITON_INTERPRET="0"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["kernel"] for r in rows] == ["_barrier_loop_kernel", "_pdl_step_kernel", "_l2_read_kernel",
                                           "_empty_kernel"]
    for r in rows:
        assert r["local_bytes"] == 0 and r["stack_bytes"] == 0 and not r["missing"], r


def test_gpu_plan_times_the_phase_variants():
    """On the GPU, the ``phases`` job also times one launch per phase (no graph), the graph without
    programmatic dependent launch, the graph on split-K tiles, the unfolded schedule (the
    persistent job too), one tile for every phase and tensor-descriptor loads; a variant gives the default call's numbers (checked on CPU in fp32, where
    no launch option changes anything but the unfolded schedule's rounding)."""
    import torch
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    jobs = {j.name: j for j in gpu_check.plan(False, ("rowblock", "phases"))}
    assert jobs["infer-fused-phases-bfloat16-B64-16384"].params["providers"] == [
        "fused:phases", "fused:phases-raw", "fused:phases-nopdl", "fused:phases-split", "fused:phases-unfolded",
        "fused:phases-uniform", "fused:phases-tma"]
    assert jobs["infer-fused-rowblock-bfloat16-B64-16384"].params["providers"] == ["fused:rowblock"]
    persistent = gpu_check.plan(False, ("persistent",))
    assert [j.params["providers"] for j in persistent if j.name == "infer-fused-persistent-bfloat16-B64-16384"] == [
        ["fused:persistent", "fused:persistent-unfolded"]]
    model = gpu_check._model(torch.float32, torch.device("cpu"), gpu_check.TINY)
    model.backend, model.fused_impl = "triton", "phases"
    v = torch.randn(3, model.config.visual_dim)
    with torch.no_grad():
        want = gpu_check._fused_call(model, v, "")()
        for variant in ("raw", "nopdl", "split", "uniform"):
            for a, b in zip(gpu_check._fused_call(model, v, variant)(), want):
                assert torch.equal(a, b)
        with pytest.raises(ValueError, match="Dv = 13 is not a multiple of 4"):  # TINY's rows: not 16-byte
            gpu_check._fused_call(model, v, "tma")()
        with kernels().count_launches() as c:
            unfolded = gpu_check._fused_call(model, v, "unfolded")()
        for a, b in zip(unfolded, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    ip = kernels().infer_phases_module
    cfg = gpu_check.TINY
    assert c.names.count("infer_phase_kernel") == ip.phase_count(cfg["layers"], cfg["learner_steps"],
                                                                 cfg["translator_steps"])  # not folded
    # a variant that launches the default call at a batch is not timed there (a duplicate row)
    import seda_fast as sf
    bf16, default = torch.bfloat16, sf.SeDAConfig(**gpu_check.DEFAULT)
    assert [gpu_check.variant_is_default(var, b, dt, default) for var, b, dt in (
        ("split", 64, bf16), ("split", 16384, bf16), ("split", 64, torch.float32), ("unfolded", 64, bf16),
        ("unfolded", 16384, bf16), ("raw", 16384, bf16), ("nopdl", 64, bf16), ("uniform", 64, bf16),
        ("uniform", 1024, bf16), ("uniform", 16384, bf16), ("tma", 64, bf16), ("tma", 16384, bf16))] == [
        False, True, True, False, True, False, False, True, False, True, False, False]


def test_gpu_plan_times_the_targets_first():
    """On the GPU the rows the targets name come first: the inference group at B = 64 and 16384, then
    the training steps as users run them (eager, fused, StepGraph, the bare graph, torch.compile),
    and only then the other inference batches, the training variants and the GPU tests."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    names = [j.name for j in gpu_check.plan(False, ("rowblock", "phases", "persistent"))]
    core = ["train-eager", "train-fused", "train-fused_stepgraph", "train-fused_graph", "train-torch_compile"]
    start = names.index("train-eager")
    assert names[start:start + len(core)] == core
    assert names[start - 1] == "infer-compile-bfloat16-B64-16384"
    assert all("B64-16384" in n for n in names[3:start])
    later = names[start + len(core):]
    assert later[0] == "infer-eager-bfloat16-B1-1024" and "train-fused-raw" in later and later[-1].startswith("tests-")
