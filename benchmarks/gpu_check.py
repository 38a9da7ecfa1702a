"""The GPU run: decisive numbers from one budgeted command, even if it is cut short.

    pip install --no-deps --no-build-isolation -e .         # offline, on the GPU image
    PYTHONUNBUFFERED=1 python benchmarks/gpu_check.py [--budget-s 420] [OUT]
    python benchmarks/gpu_check.py --dry-run [OUT]           # CPU: Triton interpreter, tiny config

``OUT`` is a folder (default ``$OUT``, else ``.``) that receives ``gpu_check.json``, or a path
ending in ``.json``. The whole file is rewritten atomically after every row, so a run killed at
any moment leaves valid JSON holding everything measured so far (``status`` says ``running``
until the end). One line is printed per row.

Work is split into *jobs*, each run in a child process with a timeout, so a hung kernel, an
illegal memory access or a compiler crash costs that job alone (recorded as ``timeout`` or
``error`` with its message) and the run goes on. The parent never touches the device. A
job starts only while the budget (``--budget-s``) is not spent; the jobs not started are
recorded as ``skipped``; a job already started may overrun the budget by ``GRACE_S`` at most.
Jobs, in order of value:

1. ``env``: device, SMs, L2 size, clocks, versions, an NVML snapshot.
2. ``micro``: ceilings (bf16 matmul, copy and L2 bandwidth, L2 latency, Python launch cost, the
   host cost of an op, a view and the label check, the kernel boundary in a CUDA graph), then
   ``sync``: a grid barrier in a cooperative launch and programmatic dependent launch
   (:mod:`gpu_micro`). They replace the cost model's assumed ceilings in the report.
3. Inference, bf16, B = 64 and 16384: ``eager`` (the eager backend as users run it) with
   ``cuda_graph`` (a CUDA graph of the eager loop, tables precomputed), each fused
   implementation (``fused:<impl>``; ``fused:phases-raw`` one launch per phase without the CUDA
   graph, ``fused:phases-nopdl`` the graph without programmatic dependent launch,
   ``fused:phases-split`` the graph on split-K tiles, ``fused:<impl>-unfolded`` without the folded
   steps, ``fused:phases-uniform`` one tile for every phase instead of each phase's own,
   ``fused:phases-tma`` the graph with the operands loaded through tensor descriptors; a variant is
   recorded as skipped at a batch where it launches the default call), and
   ``torch_compile`` (``max-autotune`` with the compile
   budget as its timeout while that much of the run's budget is left, ``reduce-overhead``
   otherwise or after a max-autotune timeout; the mode is recorded).
4. Training steps (loss, backward, AdamW), bf16 autocast, both stages, B = 256 and 4096:
   eager, fused (phases: stage 1's diffusion term, stage 2's unroll saving its activations),
   ``fused_stepgraph`` (the fused step through :class:`seda_fast.StepGraph`, as users capture it:
   replays plus StepGraph's own host work per call), ``fused_graph`` (the same step captured bare in
   one CUDA graph: the GPU work alone), torch.compile; each with the step's peak memory.
5. Inference bf16 at B = 1 and 1024, then fp32 at all four batches.
6. Training variants: ``fused-raw`` (the phase ops' launches one Python launch each, without their
   graphs of recurring launches) and the other implementations (``fused-recompute``, stage 2 only;
   ``fused-rowblock``, both stages; each also ``_graph``).
7. The GPU-only test cases: every kernel test file, ``-x``, one child (and timeout) per file.

Every timing row carries its error against the fp32 eager reference: inference, the largest
``|out - ref|`` over (logits, s, m) and the relative norm error of the logits; training, the
relative error of the first step's loss and the largest relative gradient error.

Test-only switch: ``SEDA_GPU_CHECK_HANG=<provider>`` (e.g. ``fused:rowblock``) makes that
provider's measurement sleep forever, to check that the timeout isolates it.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROW_PREFIX = "@@row "
HANG_ENV = "SEDA_GPU_CHECK_HANG"
GRACE_S = 60.0  # how far past the budget a job already started may run
# extra providers timed beside "fused:phases" on CUDA: "raw" = one launch per phase (no CUDA graph),
# "nopdl" = the graph replay without programmatic dependent launch, "split" = the graph replay on
# split-K tiles (fp16/bf16 up to B = 256; launch_options(split_k=True)), "unfolded" = without the
# folded steps that B <= 256 runs by default (launch_options(fold=False)), "uniform" = every phase on
# the call's one tile instead of its own (launch_options(tile_plan=False); differs above B = 256),
# "tma" = the graph replay with the GEMM operands loaded through tensor descriptors (launch_options(tma=True))
PHASE_VARIANTS = {"phases": ("raw", "nopdl", "split", "unfolded", "uniform", "tma"), "persistent": ("unfolded",)}
# stage-2 training variants of the fused providers: name -> (SeDA.fused_impl, SeDA.activation_memory);
# plain "fused" is the default (phases, saving every step's activations, recurring launches replayed
# as CUDA graphs); "raw" is the default launched one phase at a time (launch_options(graph=False))
TRAIN_VARIANTS = {"raw": ("phases", "save"), "recompute": ("phases", "recompute"), "rowblock": ("rowblock", None)}
UNGRAPHED_VARIANTS = ("raw",)  # no "_graph" provider: a whole-step capture launches plainly anyway

sys.path.insert(0, str(ROOT))
from seda_fast.presets import DEFAULT, TINY  # noqa: E402  (d=512, H=1024, L=2, K1=K2=10 / the smoke model)

# Kernel test files whose bf16 / throughput-tile / autocast / compile-on-CUDA cases only run on a GPU.
GPU_TEST_FILES = ("core/test_triton_inference.py", "ops/test_infer_phases.py", "ops/test_denoiser_x0_loss.py",
                  "ops/test_translator_unroll.py", "ops/test_unroll_phases.py", "ops/test_denoise_phases.py",
                  "ops/test_launch_graphs.py", "ops/test_center_loss.py", "ops/test_center_update.py",
                  "core/test_triton_training.py", "core/test_training_graph.py", "core/test_step_graph.py")


@dataclass
class Job:
    """One child process: ``kind`` says what it measures, ``params`` how; ``timeout_s`` bounds it."""
    name: str
    kind: str
    params: dict = field(default_factory=dict)
    timeout_s: float = 120.0


def fused_impls(dry: bool) -> tuple[str, ...]:
    """The fused inference implementations the library offers on the run's device
    (``seda_fast.fused_impls(device)``; the dry run's CPU lacks the persistent one)."""
    import seda_fast as sf
    return tuple(sf.fused_impls("cpu" if dry else "cuda"))


def plan(dry: bool, impls: tuple[str, ...]) -> list[Job]:
    """The jobs in the order they run (see the module docstring)."""
    jobs = [Job("env", "env", timeout_s=60), Job("micro", "micro", timeout_s=90),
            Job("sync", "sync", timeout_s=60)]
    if dry:
        groups = [("float32", (1, 3))]
        train_batches = (4,)
    else:
        groups = [("bfloat16", (64, 16384)), ("bfloat16", (1, 1024)), ("float32", (1, 64, 1024, 16384))]
        train_batches = (256, 4096)
    def train(providers):
        return [Job(f"train-{provider}", "train", dict(provider=provider, batches=list(train_batches),
                                                       amp="float32" if dry else "bfloat16"), 300)
                for provider in providers]
    variants = tuple(f"fused-{v}{g}" for v in TRAIN_VARIANTS for g in ("", "_graph")
                     if not (g and v in UNGRAPHED_VARIANTS))
    for i, (dtype, batches) in enumerate(groups):
        tag = f"{dtype}-B{'-'.join(map(str, batches))}"
        common = dict(dtype=dtype, batches=list(batches))
        jobs.append(Job(f"infer-eager-{tag}", "infer", dict(common, providers=["eager", "cuda_graph"]), 180))
        for impl in impls:
            providers = [f"fused:{impl}"] + [f"fused:{impl}-{v}" for v in (() if dry else PHASE_VARIANTS.get(impl, ()))]
            jobs.append(Job(f"infer-fused-{impl}-{tag}", "infer", dict(common, providers=providers), 180))
        jobs.append(Job(f"infer-compile-{tag}", "infer", dict(common, providers=["torch_compile"]), 300))
        if i == 0:  # the training targets' rows before the inference batches no target names
            jobs += train(("eager", "fused", "fused_stepgraph", "fused_graph", "torch_compile"))
    jobs += train(variants)
    for name in GPU_TEST_FILES:
        params = {"file": name, "select": "fp32_parity and B1-L1-K1" if dry else None}
        jobs.append(Job(f"tests-{Path(name).stem[len('test_'):]}", "tests", params, 240))
        if dry:  # one file is enough to keep the path alive on CPU
            break
    return jobs


# --------------------------------------------------------------------------- parent


class Results:
    """The JSON document, rewritten atomically (temp file + rename) after every change."""

    def __init__(self, path: Path, meta: dict):
        self.path = path
        self.doc = {"kind": "seda_fast.gpu_check", "schema": 2, **meta, "status": "running", "rows": []}
        path.parent.mkdir(parents=True, exist_ok=True)
        self.write()

    def add(self, row: dict) -> None:
        self.doc["rows"].append(row)
        self.write()
        print(_one_line(row), flush=True)

    def write(self) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".gpu_check.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self.doc, f, indent=1)
        os.replace(tmp, self.path)


def _one_line(row: dict) -> str:
    keep = {k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in row.items()
            if not isinstance(v, (dict, list)) or k in ("batches",)}
    return json.dumps(keep)


def _reader(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def run_job(job: Job, timeout_s: float, args, results: Results, log_tail: int = 30) -> str:
    """Run ``job`` in a child; add each row it prints as soon as it arrives; on timeout, a crash or
    a non-zero exit, add a row saying so (with the output's tail). Returns ``"ok"``,
    ``"timeout"`` or ``"error"``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(asdict(job))]
    if args.dry_run:
        cmd.append("--dry-run")
    cmd += ["--iters", str(args.iters), "--compile-mode", args.compile_mode]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.dry_run:
        env["TRITON_INTERPRET"] = "1"
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    tail, rows, timed_out = [], 0, False
    deadline = t0 + timeout_s
    while True:
        try:
            line = lines.get(timeout=max(0.05, min(1.0, deadline - time.monotonic())))
        except queue.Empty:
            if time.monotonic() >= deadline:
                timed_out = True
                break
            continue
        if line is None:
            break
        if line.startswith(ROW_PREFIX):
            row = json.loads(line[len(ROW_PREFIX):])
            results.add({"job": job.name, **row})
            rows += 1
        else:
            tail = (tail + [line.rstrip()])[-log_tail:]
    if timed_out:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    seconds = round(time.monotonic() - t0, 1)
    if timed_out:
        results.add({"job": job.name, "section": "job", "status": "timeout", "seconds": seconds,
                     "error": f"no end after {timeout_s:.0f} s; killed ({rows} rows reached the JSON)",
                     "params": job.params, "output_tail": tail})
        return "timeout"
    if proc.returncode != 0:
        results.add({"job": job.name, "section": "job", "status": "error", "seconds": seconds,
                     "error": f"child exited with {proc.returncode}", "output_tail": tail})
        return "error"
    return "ok"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="The budgeted GPU run: ceilings, inference, training, GPU tests "
                                                 "-> gpu_check.json (rewritten after every row)")
    parser.add_argument("out", nargs="?", help="output folder or .json path (default: $OUT, else .)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="no job starts after this many seconds (default 420)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny config")
    parser.add_argument("--only", help="comma-separated job-name prefixes to run (default: all)")
    parser.add_argument("--job-timeout", type=float, help="cap every job's timeout at this many seconds")
    parser.add_argument("--compile-budget-s", type=float, default=150.0,
                        help="a torch.compile job uses max-autotune, with this timeout, while this much of the "
                             "budget is left; otherwise (or when it times out) reduce-overhead")
    parser.add_argument("--compile-mode", default="auto",
                        choices=("auto", "max-autotune", "reduce-overhead", "default"))
    parser.add_argument("--iters", type=int, default=20, help="timed calls per row (after warm-up)")
    parser.add_argument("--list", action="store_true", help="print the plan and exit")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(Job(**json.loads(args.child)), args)

    impls = fused_impls(args.dry_run)
    jobs = plan(args.dry_run, impls)
    if args.only:
        prefixes = [p.strip() for p in args.only.split(",") if p.strip()]
        jobs = [j for j in jobs if any(j.name.startswith(p) for p in prefixes)]
    if args.list:
        for j in jobs:
            print(f"{j.name:<40} {j.kind:<6} timeout {j.timeout_s:.0f} s")
        return 0
    out = Path(args.out or os.environ.get("OUT") or ".")
    path = out if out.suffix == ".json" else out / "gpu_check.json"
    results = Results(path, {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else list(argv), "dry_run": args.dry_run,
        "budget_s": args.budget_s, "config": TINY if args.dry_run else DEFAULT, "fused_impls": list(impls),
        "plan": [j.name for j in jobs]})
    t0 = time.monotonic()
    queue_ = list(jobs)
    while queue_:
        job = queue_.pop(0)
        spent = time.monotonic() - t0
        if spent >= args.budget_s:
            results.add({"job": job.name, "section": "job", "status": "skipped",
                         "reason": f"budget {args.budget_s:.0f} s spent ({spent:.0f} s)"})
            continue
        # a job may overrun the budget by GRACE_S at most, so the whole run ends near it
        timeout = min(job.timeout_s, args.budget_s - spent + GRACE_S)
        if args.job_timeout is not None:
            timeout = min(timeout, args.job_timeout)
        compile_job = job.kind == "infer" and job.params["providers"] == ["torch_compile"]
        if compile_job and args.compile_mode == "auto" and "compile_mode" not in job.params:
            fits = args.budget_s - spent >= args.compile_budget_s
            job.params["compile_mode"] = "max-autotune" if fits else "reduce-overhead"
            if fits:  # max-autotune gets its compile budget; past it, the same job again in reduce-overhead
                timeout = min(timeout, args.compile_budget_s)
        outcome = run_job(job, timeout, args, results)
        if compile_job and outcome == "timeout" and job.params.get("compile_mode") == "max-autotune" \
                and args.compile_mode == "auto":
            queue_.insert(0, Job(job.name, job.kind, dict(job.params, compile_mode="reduce-overhead"), job.timeout_s))
    results.doc["status"] = "complete"
    results.doc["seconds"] = round(time.monotonic() - t0, 1)
    results.write()
    bad = [r for r in results.doc["rows"] if r.get("status") in ("error", "timeout")]
    print(f"wrote {path}: {len(results.doc['rows'])} rows, {len(bad)} errors/timeouts, "
          f"{results.doc['seconds']} s", flush=True)
    return 0


# --------------------------------------------------------------------------- child


def emit(row: dict) -> None:
    """Send one row to the parent (one line on stdout)."""
    print(ROW_PREFIX + json.dumps(row, default=str), flush=True)


def _maybe_hang(provider: str) -> None:
    if os.environ.get(HANG_ENV) == provider:
        time.sleep(10**6)


def child_main(job: Job, args) -> int:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch
    cuda = torch.cuda.is_available() and not args.dry_run
    device = torch.device("cuda" if cuda else "cpu")
    {"env": child_env, "micro": child_micro, "sync": child_micro, "infer": child_infer, "train": child_train,
     "tests": child_tests}[job.kind](job, args, device)
    return 0


def child_env(job, args, device) -> None:
    import torch

    from seda_fast.tools.envinfo import environment_report
    from seda_fast.tools.profiling import NVMLMonitor
    row = {"section": "env", "name": "device", "status": "ok", "dry_run": args.dry_run,
           "versions": environment_report(), "cuda": torch.version.cuda}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        row.update(device=props.name, sms=props.multi_processor_count, l2_bytes=props.L2_cache_size,
                   memory_bytes=props.total_memory, capability=f"sm_{props.major}{props.minor}")
    else:
        row.update(device="cpu (Triton interpreter; no device figures)", sms=None)
    nvml = NVMLMonitor()
    if nvml.available:
        nv = nvml._nvml
        clocks = {}
        for name, kind in (("sm", "NVML_CLOCK_SM"), ("mem", "NVML_CLOCK_MEM")):
            for label, fn in (("max", nv.nvmlDeviceGetMaxClockInfo), ("now", nv.nvmlDeviceGetClockInfo)):
                value = nvml._read(fn, getattr(nv, kind))
                if value is not None:
                    clocks[f"{name}_{label}_mhz"] = value
        row["clocks"] = clocks
        row["nvml"] = nvml.snapshot()
    else:
        row["nvml"] = {"unavailable": nvml.reason}
    emit(row)


def child_micro(job, args, device) -> None:
    import gpu_micro
    table = gpu_micro.CEILINGS if job.kind == "micro" else gpu_micro.SYNC
    for name, fn in table.items():
        t0 = time.perf_counter()
        try:
            out = fn(device, args.dry_run)
            status = "skipped" if "skipped" in out else "ok"
            emit({"section": "micro", "name": name, "status": status, "dry_run": args.dry_run, **out,
                  "seconds": round(time.perf_counter() - t0, 2)})
        except Exception as exc:  # one microbenchmark failing must not lose the others
            emit({"section": "micro", "name": name, "status": "error", "error": f"{type(exc).__name__}: {exc}"[:500]})


def _model(dtype, device, cfg):
    import torch

    import seda_fast as sf
    torch.manual_seed(0)  # every child builds the same weights
    return sf.SeDA(sf.SeDAConfig(**cfg)).to(device=device, dtype=dtype).eval()


def _fused_call(model, v, variant: str):
    """``model.infer(v)`` launched as ``variant`` says (see :data:`PHASE_VARIANTS`; "" = the default)."""
    if not variant:
        return lambda: model.infer(v)
    from seda_fast.ops.infer_phases import launch_options
    options = {"raw": dict(graph=False), "nopdl": dict(pdl=False), "split": dict(split_k=True),
               "unfolded": dict(fold=False), "uniform": dict(tile_plan=False), "tma": dict(tma=True)}[variant]

    def call():
        with launch_options(**options):
            return model.infer(v)
    return call


def variant_is_default(variant: str, batch: int, dtype, cfg) -> bool:
    """Whether ``fused:<impl>-<variant>`` launches exactly the default call at this batch and dtype
    (split-K tiles and the folded steps exist only up to B = 256, split-K only in fp16/bf16; one
    tile per call differs from the per-phase tiles only where ``pick_phase_plan`` gives some phase
    another tile), so timing it would spend GPU time on a duplicate row. ``cfg``: the model's
    ``SeDAConfig``."""
    from seda_fast.ops.runtime import kernels
    ip = kernels().infer_phases_module
    if variant == "split":
        return ip.pick_infer_tiles(batch, cfg.dim, cfg.hidden, dtype, split_k=True) == \
            ip.pick_infer_tiles(batch, cfg.dim, cfg.hidden, dtype)
    if variant == "unfolded":
        return not ip.use_fold(batch)
    if variant == "uniform":  # on this machine's GPU's SMs, as the launcher plans
        import torch
        sms = ip.device_sms(torch.device("cuda")) if torch.cuda.is_available() else ip.DEFAULT_SMS
        phases = ip.build_schedule(cfg.dim, cfg.hidden, cfg.num_classes, cfg.visual_dim, cfg.layers,
                                   cfg.learner_steps, cfg.translator_steps, ip.use_fold(batch))
        return set(ip.pick_phase_plan(phases, batch, cfg.dim, cfg.hidden, dtype, sms=sms)) == {
            ip.pick_infer_tiles(batch, cfg.dim, cfg.hidden, dtype)}
    return False


def child_infer(job, args, device) -> None:
    import torch

    from seda_fast.tools import bench, cost_model
    from seda_fast import reference
    torch.set_grad_enabled(False)  # inference only: no autograd in a captured graph or a compiled trace
    cuda = device.type == "cuda"
    cfg = TINY if args.dry_run else DEFAULT
    dtype = getattr(torch, job.params["dtype"])
    model, model32 = _model(dtype, device, cfg), _model(torch.float32, device, cfg)
    warm, iters = (1, 2) if args.dry_run else (3, args.iters)
    compiled, compile_mode = None, job.params.get("compile_mode") or (
        args.compile_mode if args.compile_mode != "auto" else "max-autotune")
    for batch in job.params["batches"]:
        gen = torch.Generator(device).manual_seed(batch)
        v32 = torch.randn(batch, model.config.visual_dim, device=device, generator=gen)
        v = v32.to(dtype)
        ref = reference.infer(model32, v32)
        tables = reference.inference_tables(model, dtype, device)
        for provider in job.params["providers"]:
            row = {"section": "inference", "provider": provider, "dtype": job.params["dtype"], "batch": batch,
                   "dry_run": args.dry_run}
            t0 = time.perf_counter()
            try:
                _maybe_hang(provider)
                if provider == "cuda_graph" and not cuda:
                    emit(dict(row, status="skipped", reason="CUDA graphs need a CUDA device"))
                    continue
                if provider == "torch_compile" and not cuda:
                    emit(dict(row, status="skipped", reason="torch.compile is timed on the GPU only"))
                    continue
                if provider == "eager":
                    fn = lambda: reference.infer(model, v)  # noqa: E731
                elif provider == "cuda_graph":
                    captured = {}

                    def eager_loop():
                        captured["out"] = reference.infer(model, v, tables=tables)
                    replay = bench.cuda_graph(eager_loop)
                    fn = lambda: (replay(), captured["out"])[1]  # noqa: E731  the graph's own outputs
                elif provider == "torch_compile":
                    if compiled is None:
                        compiled = torch.compile(reference.infer, mode=compile_mode, dynamic=False)
                    c0 = time.perf_counter()
                    compiled(model, v, tables=tables)
                    if cuda:
                        torch.cuda.synchronize()
                    row.update(compile_mode=compile_mode, compile_s=round(time.perf_counter() - c0, 1))
                    fn = lambda: compiled(model, v, tables=tables)  # noqa: E731
                elif provider.startswith("fused:"):
                    impl, _, variant = provider.split(":", 1)[1].partition("-")
                    if variant and variant_is_default(variant, batch, dtype, model.config):
                        emit(dict(row, status="skipped", reason=f"the same launches as fused:{impl} at this batch"))
                        continue
                    if hasattr(model, "fused_impl"):
                        model.fused_impl = impl
                    model.backend = "triton"
                    fn = _fused_call(model, v, variant)
                else:
                    raise ValueError(f"unknown provider {provider!r}")
                out = fn()
                row.update(bench.summarize(bench.device_times(fn, warm, iters, cuda)))
                row["max_abs_err_vs_fp32"] = bench.max_error_vs_fp32(out, ref)
                row["rel_err_logits_vs_fp32"] = float((out[0].float() - ref[0]).norm() / ref[0].norm())
                row["floor_ms"] = cost_model.inference_cost(model.config, batch, job.params["dtype"]).floor_s * 1e3
                row["status"] = "ok"
            except Exception as exc:  # record and go on with the next row
                row.update(status="error", error=f"{type(exc).__name__}: {exc}"[:500])
            finally:
                model.backend = "eager"
            row["seconds"] = round(time.perf_counter() - t0, 2)
            emit(row)


def child_train(job, args, device) -> None:
    import torch

    import seda_fast as sf
    from seda_fast.tools import bench, memory
    cuda = device.type == "cuda"
    provider = job.params["provider"]
    amp = getattr(torch, job.params["amp"])
    cfg = TINY if args.dry_run else DEFAULT
    warm, iters = (1, 2) if args.dry_run else (3, args.iters)
    if provider == "torch_compile":
        import torch._inductor.config as inductor_config
        inductor_config.fallback_random = True  # the same random draws as eager, so the error check holds

    def build(backend, batch):
        torch.manual_seed(0)
        model = sf.SeDA(sf.SeDAConfig(**cfg), backend=backend).to(device).train()
        g = torch.Generator(device).manual_seed(batch)
        v = torch.randn(batch, model.config.visual_dim, device=device, generator=g)
        y = torch.randint(0, model.config.num_classes, (batch,), device=device, generator=g)
        text = torch.randn(model.config.num_classes, model.config.text_dim, device=device, generator=g)
        with torch.no_grad():
            model.learner_loss(v, y)  # stage 1 in train mode: the centers get their first values
        return model, v, y, text

    def loss_and_grads(model, fn, v, y, text, dtype):
        torch.manual_seed(1)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = fn(v, y, text=text)
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params)
        return loss.detach().float(), grads

    graphed = provider.endswith("_graph")
    stepgraph = provider == "fused_stepgraph"  # on CPU StepGraph runs every call directly (the path is kept alive)
    variant = provider[len("fused-"):].removesuffix("_graph") if provider.startswith("fused-") else None
    for stage in (1, 2) if variant in (None, "raw", "rowblock") else (2,):  # recompute changes only stage 2
        for batch in job.params["batches"]:
            row = {"section": "training", "provider": provider, "stage": stage, "batch": batch,
                   "amp": job.params["amp"], "dry_run": args.dry_run}
            t0 = time.perf_counter()
            try:
                _maybe_hang(provider)
                if provider == "torch_compile" and not cuda:
                    emit(dict(row, status="skipped", reason="torch.compile is timed on the GPU only"))
                    continue
                if graphed and not cuda:
                    emit(dict(row, status="skipped", reason="CUDA graphs need a CUDA device"))
                    continue
                backend = "triton" if provider.startswith("fused") else "eager"
                model, v, y, text = build(backend, batch)
                if variant is not None:
                    model.fused_impl, model.activation_memory = TRAIN_VARIANTS[variant]
                row["unroll"] = ("rowblock" if model.fused_impl == "rowblock" else "phases") if backend == "triton" \
                    else None
                model.set_stage(stage)
                fn = torch.compile(model) if provider == "torch_compile" else model
                ref_model, *_ = build("eager", batch)
                ref_model.set_stage(stage)
                ref_loss, ref_grads = loss_and_grads(ref_model, ref_model, v, y, text, torch.float32)
                loss, grads = loss_and_grads(model, fn, v, y, text, amp)
                row["loss_rel_err_vs_fp32"] = float((loss - ref_loss).abs() / ref_loss.abs().clamp_min(1e-30))
                row["max_grad_rel_err_vs_fp32"] = max(
                    float((g.float() - r).norm() / r.norm().clamp_min(1e-30)) for g, r in zip(grads, ref_grads))
                del ref_model, ref_grads, grads
                opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                        capturable=graphed or (stepgraph and cuda))

                from seda_fast.ops.runtime import launch_options, phase_graphs
                raw = variant in UNGRAPHED_VARIANTS

                def step():  # autocast's weight-cast cache must be off inside a graph capture
                    with launch_options(graph=not raw):
                        with torch.autocast(device.type, dtype=amp, enabled=amp != torch.float32,
                                            cache_enabled=not graphed):
                            loss = fn(v, y, text=text)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                    opt.step()
                if graphed:  # the whole step (loss, backward, AdamW) captured once, then replayed
                    step = bench.cuda_graph(step)
                if stepgraph:  # warm-up, capture and replays by the library; its host work per call counted
                    step_graph = sf.StepGraph(model, opt)
                    inputs = (v, y) if stage == 1 else (v, y, text)

                    def step():
                        with torch.autocast(device.type, dtype=amp, enabled=amp != torch.float32):
                            step_graph(*inputs)
                phase_graphs(clear=True)
                row.update(bench.summarize(bench.device_times(step, warm, iters, cuda)))
                row["phase_graphs"] = phase_graphs()  # did the phase ranges' launches recur and replay?
                if stepgraph:
                    row["step_graph"] = dict(step_graph.stats)  # direct steps, captures, replays
                row["peak_mb"] = memory.peak_bytes(step, device) / 2**20
                row["status"] = "ok"
            except Exception as exc:  # record and go on with the next row
                row.update(status="error", error=f"{type(exc).__name__}: {exc}"[:500])
            row["seconds"] = round(time.perf_counter() - t0, 2)
            emit(row)


def child_tests(job, args, device) -> None:
    path = ROOT / "tests" / job.params["file"]
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", str(path)]
    if job.params.get("select"):
        cmd += ["-k", job.params["select"]]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-12:]
    emit({"section": "tests", "file": job.params["file"], "status": "ok" if proc.returncode == 0 else "failed",
          "returncode": proc.returncode, "summary": tail[-1] if tail else "", "output_tail": tail,
          "seconds": round(time.perf_counter() - t0, 1)})


if __name__ == "__main__":
    sys.exit(main())
