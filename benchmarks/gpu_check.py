"""The whole GPU check of the fused inference and training in ONE call (< 10 minutes on the lent H100).

    pip install --no-deps --no-build-isolation -e .   # offline, on the GPU image
    python benchmarks/gpu_check.py [OUT_JSON]          # default: $OUT/gpu_check.json
    python benchmarks/gpu_check.py --dry-run [OUT_JSON] # CPU, Triton interpreter, tiny config

1. GPU kernel tests (``tests/test_fused_inference.py``, ``test_training_ops.py``,
   ``test_denoiser_train.py``, ``test_translator_unroll.py``, ``test_fused_training.py``: bf16, the
   throughput tiles, autocast and torch.compile on CUDA).
2. Inference timings, default config (d=512, H=1024, L=2, K1=K2=10, Dv=1280, C=10), bf16 and fp32,
   B = 1, 64, 1024, 16384: median ms over CUDA events after warm-up, each timed call synchronised:
   * ``eager``: ``reference.infer`` (the eager backend as users run it, tables built per call);
   * ``cuda_graph``: a CUDA graph of ``reference.infer`` with its tables precomputed
     (:func:`seda_fast.reference.inference_tables`: building them copies host lists to the
     device, which capture forbids);
   * ``torch_compile``: ``torch.compile(mode="max-autotune")`` of the same loop (skipped, and
     marked so, once the compile time budget is spent);
   * ``fused``: ``SeDA(backend="triton")`` (2 launches).
   Each row has speedups of fused over the others, the cost-model floor and time / floor.
3. Training-step timings, default config, bf16 autocast (fp32 master weights), B = 256 and 4096,
   each stage: one full step (loss, backward, AdamW) for ``eager``, ``torch_compile`` (default mode,
   of the eager model; skipped once the compile budget is spent) and ``fused``
   (``backend="triton"``), median ms and the step's peak memory above the start
   (``max_memory_allocated``), with the fused speedups and memory ratios.
4. JSON with device name, versions, date, shapes, results.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DRY = "--dry-run" in sys.argv
if DRY:  # the interpreter mode is fixed when the kernels are decorated: set it before importing them
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import seda_fast as sf  # noqa: E402
from seda_fast import bench as bench_lib  # noqa: E402
from seda_fast import cost_model, fused, reference  # noqa: E402

DEFAULT = dict(visual_dim=1280, text_dim=384, num_classes=10, dim=512, hidden=1024, layers=2,
               learner_steps=10, translator_steps=10)
TINY = dict(visual_dim=13, text_dim=7, num_classes=3, dim=16, hidden=24, layers=2,
            learner_steps=2, translator_steps=2)


def time_ms(fn, warmup: int, iters: int, cuda: bool) -> float:
    """Median milliseconds of ``fn()``; each timed call is synchronised."""
    return bench_lib.summarize(bench_lib.device_times(fn, warmup, iters, cuda))["median_ms"]


# Kernel tests whose bf16 / throughput-tile / torch.compile-on-CUDA cases only run on a GPU.
GPU_TEST_FILES = ("test_fused_inference.py", "test_training_ops.py", "test_denoiser_train.py",
                  "test_translator_unroll.py", "test_fused_training.py")


def run_parity_tests(dry: bool) -> dict:
    files = [ROOT / "tests" / name for name in GPU_TEST_FILES]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *map(str, files)]
    if dry:
        cmd = cmd[:-len(files)] + [str(files[0]), "-k", "fp32_parity and 1-1-1"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    print("\n".join(tail), flush=True)
    return {"command": " ".join(cmd[2:]), "returncode": proc.returncode, "seconds": round(time.perf_counter() - t0, 1),
            "summary": tail[-1] if tail else ""}


def bench(dry: bool, compile_budget_s: float, iters: int) -> list[dict]:
    cuda = torch.cuda.is_available() and not dry
    device = torch.device("cuda" if cuda else "cpu")
    cfg_kwargs = TINY if dry else DEFAULT
    batches = (1, 3) if dry else (1, 64, 1024, 16384)
    dtypes = ("float32",) if dry else ("bfloat16", "float32")
    compile_spent, rows = 0.0, []
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        torch.manual_seed(0)
        model = sf.SeDA(sf.SeDAConfig(**cfg_kwargs)).to(device=device, dtype=dtype).eval()
        tables = reference.inference_tables(model, dtype, device)
        compiled = None
        for batch in batches:
            v = torch.randn(batch, model.config.visual_dim, device=device, dtype=dtype)
            row = {"dtype": dtype_name, "batch": batch}
            warm, n = (1, 2) if dry else (3, iters)
            with torch.no_grad():
                row["eager_ms"] = time_ms(lambda: reference.infer(model, v), warm, n, cuda)
                if cuda:
                    row["cuda_graph_ms"] = time_ms(bench_lib.cuda_graph(lambda: reference.infer(model, v, tables=tables)), warm, n, cuda)
                if cuda and compile_spent < compile_budget_s:
                    t0 = time.perf_counter()
                    try:
                        if compiled is None:
                            compiled = torch.compile(reference.infer, mode="max-autotune", dynamic=False)
                        for _ in range(2):
                            compiled(model, v, tables=tables)
                        torch.cuda.synchronize()
                        compile_spent += time.perf_counter() - t0
                        row["torch_compile_ms"] = time_ms(lambda: compiled(model, v, tables=tables), warm, n, cuda)
                    except Exception as exc:  # report, do not lose the rest of the run
                        compile_spent += time.perf_counter() - t0
                        row["torch_compile_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                elif cuda:
                    row["torch_compile_ms"] = None
                    row["torch_compile_note"] = f"skipped: compile budget {compile_budget_s:.0f} s spent"
                model.backend = "triton"
                row["fused_ms"] = time_ms(lambda: model.infer(v), warm, n, cuda)
                model.backend = "eager"
                out, ref = fused.infer(model, v), reference.infer(model, v)
                row["fused_max_abs_err_vs_eager"] = max((o.float() - r.float()).abs().max().item() for o, r in zip(out, ref))
            cost = cost_model.inference_cost(model.config, batch, dtype_name)
            row["cost_model"] = cost.to_dict()
            row["fused_over_floor"] = row["fused_ms"] * 1e-3 / cost.floor_s
            for base in ("eager", "cuda_graph", "torch_compile"):
                if row.get(f"{base}_ms"):
                    row[f"speedup_vs_{base}"] = row[f"{base}_ms"] / row["fused_ms"]
            rows.append(row)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                              if k != "cost_model"}), flush=True)
    return rows


def train_bench(dry: bool, compile_budget_s: float, iters: int) -> list[dict]:
    """Full training steps (loss + backward + AdamW) per stage and provider; see the module docstring."""
    from seda_fast import memory
    cuda = torch.cuda.is_available() and not dry
    device = torch.device("cuda" if cuda else "cpu")
    cfg_kwargs = TINY if dry else DEFAULT
    batches = (4,) if dry else (256, 4096)
    amp_dtype = torch.float32 if dry else torch.bfloat16
    compile_spent, rows = 0.0, []
    for stage in (1, 2):
        for batch in batches:
            row = {"stage": stage, "batch": batch, "amp": str(amp_dtype).replace("torch.", "")}
            for provider in ("eager", "torch_compile", "fused"):
                if provider == "torch_compile" and (not cuda or compile_spent >= compile_budget_s):
                    row["torch_compile_ms"] = None
                    row["torch_compile_note"] = "skipped: " + ("no CUDA" if not cuda else "compile budget spent")
                    continue
                torch.manual_seed(0)
                model = sf.SeDA(sf.SeDAConfig(**cfg_kwargs), backend="triton" if provider == "fused" else "eager")
                model = model.to(device).train()
                g = torch.Generator(device).manual_seed(0)
                v = torch.randn(batch, model.config.visual_dim, device=device, generator=g)
                y = torch.randint(0, model.config.num_classes, (batch,), device=device, generator=g)
                text = torch.randn(model.config.num_classes, model.config.text_dim, device=device, generator=g)
                model.learner_loss(v, y)  # centers initialised
                model.set_stage(stage)
                opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
                fn = torch.compile(model) if provider == "torch_compile" else model

                def step():
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32):
                        loss = fn(v, y, text=text)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    return loss
                t0 = time.perf_counter()
                try:
                    step()
                    if cuda:
                        torch.cuda.synchronize()
                except Exception as exc:  # report, do not lose the rest of the run
                    row[f"{provider}_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                    continue
                finally:
                    if provider == "torch_compile":
                        compile_spent += time.perf_counter() - t0
                warm, n = (1, 2) if dry else (3, iters)
                row[f"{provider}_ms"] = time_ms(step, warm, n, cuda)
                row[f"{provider}_peak_mb"] = memory.peak_bytes(step, device) / 2**20
                row[f"{provider}_loss"] = float(step().item())
            for base in ("eager", "torch_compile"):
                if row.get(f"{base}_ms") and row.get("fused_ms"):
                    row[f"speedup_vs_{base}"] = row[f"{base}_ms"] / row["fused_ms"]
                    row[f"memory_vs_{base}"] = row["fused_peak_mb"] / row[f"{base}_peak_mb"]
            rows.append(row)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="GPU parity tests + inference and training timings -> JSON")
    parser.add_argument("out", nargs="?", help="output JSON path (default: $OUT/gpu_check.json)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny config")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--train-compile-budget", type=float, default=150.0,
                        help="seconds of torch.compile compilation for the training steps")
    parser.add_argument("--compile-budget", type=float, default=150.0,
                        help="seconds of torch.compile(max-autotune) compilation before the rest is skipped")
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --dry-run on CPU")
    out = Path(args.out) if args.out else Path(os.environ.get("OUT", ".")) / "gpu_check.json"
    t0 = time.perf_counter()
    import triton
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() and not args.dry_run else "cpu (interpreter)",
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
                     "cuda": torch.version.cuda},
        "dry_run": args.dry_run,
        "config": TINY if args.dry_run else DEFAULT,
        "ceilings": {"bf16_flops": cost_model.H100_BF16_FLOPS, "copy_bytes_per_s": cost_model.H100_COPY_BYTES_PER_S},
        "fp32_matmul": "IEEE fp32 (allow_tf32 off) in both eager and fused",
    }
    if not args.skip_tests:
        result["parity_tests"] = run_parity_tests(args.dry_run)
    result["timings"] = bench(args.dry_run, args.compile_budget, args.iters)
    result["training"] = train_bench(args.dry_run, args.train_compile_budget, args.iters)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out} in {result['seconds']} s")
    return 0 if result.get("parity_tests", {}).get("returncode", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
