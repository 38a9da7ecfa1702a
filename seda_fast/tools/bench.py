"""Benchmark machinery shared by ``benchmarks/`` (pytest-benchmark) and ``benchmarks/gpu_check.py``,
and the report command::

    python -m seda_fast bench report RESULTS.json [--out DIR | --update-reference]

turns a pytest-benchmark JSON (or gpu_check JSON) into a markdown table ``<stem>.md`` and PNG plots
(speedup over eager vs batch per provider; measured time over the cost model's floor; p20-p80
error bars), written to ``./seda_fast_out/`` by default (:mod:`seda_fast.outputs`).

One source of truth for times: in a pytest-benchmark JSON every time the report shows comes from
pytest-benchmark's own samples of the row: the median is its ``stats.median`` (what
``pytest-benchmark compare`` shows), and p20/p80 are percentiles of the same samples
(``stats.data``, which ``--benchmark-json`` keeps; the suite also stores them in ``extra_info``).

Providers of one inference call (all run the same math, docs/math.md, "Inference"):

* ``eager`` - :func:`seda_fast.reference.infer` as users run it;
* ``cuda_graph`` - a CUDA graph of the eager loop;
* ``compile_max_autotune`` / ``compile_reduce_overhead`` - ``torch.compile`` of the eager loop
  (these two get the weight-only tables precomputed, as the fused path caches them; ``eager``
  rebuilds them each call, as the eager backend does);
* ``triton`` - the fused kernels (``SeDA(backend="triton")``).

Device times are measured with CUDA events on a GPU (each timed call synchronised) and with
``perf_counter`` on CPU; CPU figures are never GPU claims.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from .. import reference

PROVIDERS = ("eager", "cuda_graph", "compile_max_autotune", "compile_reduce_overhead", "triton")
BASELINES = ("eager", "cuda_graph", "compile_max_autotune", "compile_reduce_overhead", "compile_default")
_ORDER = ("eager", "cuda_graph", "compile_default", "compile_max_autotune", "compile_reduce_overhead", "triton")


class ProviderUnavailable(RuntimeError):
    """The provider cannot run here (no CUDA, no interpreter); the message says why."""


def device_times(fn, warmup: int, iters: int, cuda: bool) -> list[float]:
    """Milliseconds of ``iters`` synchronised calls of ``fn()`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def summarize(samples: list[float]) -> dict:
    """``median_ms``, ``p20_ms``, ``p80_ms`` of a list of millisecond samples."""
    ordered = sorted(samples)

    def pct(q):
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]
    return {"median_ms": statistics.median(ordered), "p20_ms": pct(0.2), "p80_ms": pct(0.8)}


def cuda_graph(fn):
    """Capture ``fn()`` (after three warm-up calls on a side stream) and return the replay callable."""
    from ..step_graph import cuda_capture, joined_side_stream
    with joined_side_stream():
        for _ in range(3):
            fn()
    return cuda_capture(fn)[1]


def inference_provider(name: str, model, visual: torch.Tensor):
    """A zero-argument callable running one inference call of ``model`` on ``visual`` with the
    provider ``name`` (under ``torch.no_grad`` inside). Raises :class:`ProviderUnavailable`."""
    from ..backends import TRITON

    cuda = visual.is_cuda
    tables = reference.inference_tables(model, visual.dtype, visual.device)

    def no_grad(fn):
        def run():
            with torch.no_grad():
                return fn()
        return run

    if name == "eager":
        return no_grad(lambda: reference.infer(model, visual))
    if name == "cuda_graph":
        if not cuda:
            raise ProviderUnavailable("CUDA graphs need a CUDA device")
        return cuda_graph(no_grad(lambda: reference.infer(model, visual, tables=tables)))
    if name in ("compile_max_autotune", "compile_reduce_overhead"):
        mode = name[len("compile_"):].replace("_", "-")
        compiled = torch.compile(reference.infer, mode=mode, dynamic=False)
        return no_grad(lambda: compiled(model, visual, tables=tables))
    if name == "triton":
        if not TRITON.available(visual.device):
            raise ProviderUnavailable("fused kernels need CUDA (or TRITON_INTERPRET=1 on CPU)")
        return no_grad(lambda: TRITON.infer(model, visual))
    raise ValueError(f"provider must be one of {PROVIDERS}, got {name!r}")


def max_error_vs_fp32(outputs, ref32) -> float:
    """Largest ``max |out - ref|`` over the (logits, s, m) outputs, against an fp32 reference."""
    return max((o.float() - r.float()).abs().max().item() for o, r in zip(outputs, ref32))


def machine_info() -> dict:
    """Device, driver and versions for the JSON (the environment report of ``python -m seda_fast env``)."""
    from .envinfo import environment_report
    return environment_report()


# --------------------------------------------------------------------------- report


def benchmark_timing(samples_s: list[float]) -> dict:
    """``median_ms``/``p20_ms``/``p80_ms`` of pytest-benchmark's per-call samples (seconds), the
    median computed as pytest-benchmark's ``stats.median`` is, so the two agree exactly."""
    out = summarize([t * 1e3 for t in samples_s])
    out["median_ms"] = statistics.median(samples_s) * 1e3
    out["timing_source"] = "pytest-benchmark"
    return out


def load_rows(path: str) -> list[dict]:
    """Flatten a pytest-benchmark JSON (``benchmarks[*].extra_info``, times from its ``stats``) into
    rows with provider, batch, dtype, config, median_ms and floor figures. p20/p80 come from the
    JSON's samples (``stats.data``), else from ``extra_info`` when the suite computed them from the
    same samples (``timing_source``); a row with neither keeps only pytest-benchmark's median."""
    data = json.loads(Path(path).read_text())
    rows = []
    if "benchmarks" in data:
        for bench in data["benchmarks"]:
            info = dict(bench.get("extra_info", {}))
            stats = bench.get("stats") or {}
            if "provider" not in info or stats.get("median") is None:
                continue
            if stats.get("data"):  # --benchmark-json keeps the samples
                info.update(benchmark_timing(stats["data"]))
            elif info.get("timing_source") != "pytest-benchmark":
                info.pop("p20_ms", None)
                info.pop("p80_ms", None)
            median_ms = stats["median"] * 1e3
            if info.get("floor_ms"):
                info["over_floor"] = median_ms / info["floor_ms"]
            info["median_ms"] = median_ms
            rows.append(info)
    else:
        raise ValueError(f"{path}: neither a pytest-benchmark JSON nor a gpu_check JSON")
    return rows


def add_speedups(rows: list[dict]) -> None:
    """``speedup_vs_<baseline>`` on every row: baseline time / this row's time, same shape."""
    index = {(r.get("kind", "inference"), r["config"], r["dtype"], r["batch"], r["provider"]): r for r in rows}
    for r in rows:
        for base in BASELINES:
            other = index.get((r.get("kind", "inference"), r["config"], r["dtype"], r["batch"], base))
            if other and other.get("median_ms") and r.get("median_ms"):
                r[f"speedup_vs_{base}"] = other["median_ms"] / r["median_ms"]


def markdown_table(rows: list[dict], meta: dict | None = None) -> str:
    lines = []
    if meta:
        lines.append(" · ".join(f"{k}: {v}" for k, v in meta.items()))
        lines.append("")
    lines.append("| kind | config | dtype | batch | provider | median ms | p20-p80 ms | vs eager | time / floor "
                 "| max err vs fp32 | peak MB |")
    lines.append("|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|")

    def f(x, spec):
        return "–" if x is None else format(x, spec)
    for r in sorted(rows, key=lambda r: (r.get("kind", "inference"), r["config"], r["dtype"], r["batch"],
                                         _ORDER.index(r["provider"]) if r["provider"] in _ORDER else 99)):
        spread = (f"{r['p20_ms']:.3g}-{r['p80_ms']:.3g}" if r.get("p20_ms") is not None else "–")
        lines.append(f"| {r.get('kind', 'inference')} | {r['config']} | {r['dtype']} | {r['batch']} | {r['provider']} "
                     f"| {f(r['median_ms'], '.4g')} | {spread} | {f(r.get('speedup_vs_eager'), '.2f')} "
                     f"| {f(r.get('over_floor'), '.1f')} | {f(r.get('max_err_vs_fp32'), '.2e')} "
                     f"| {f(r.get('peak_memory_mb'), '.1f')} |")
    return "\n".join(lines)


def _spread(row: dict, metric: str):
    """``(low, high)`` of ``metric`` over the row's p20-p80 times, or None without them."""
    p20, p80, med = row.get("p20_ms"), row.get("p80_ms"), row["median_ms"]
    if p20 is None or p80 is None or not med:
        return None
    value = row[metric]
    if metric == "speedup_vs_eager":  # baseline median / this row's time: slower time, lower speedup
        low, high = value * med / p80, value * med / p20
    else:
        low, high = value * p20 / med, value * p80 / med
    return min(low, value), max(high, value)  # p20 = median = p80 must not round to a negative bar


def plot(rows: list[dict], out_dir: Path) -> list[Path]:
    """Two PNGs: speedup over eager vs batch per provider, and time over the floor vs batch, each
    point with an error bar over the row's p20-p80 times (none where the JSON lacks them)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for metric, ylabel, name in (("speedup_vs_eager", "speedup over eager (x)", "speedup.png"),
                                 ("over_floor", "measured time / cost-model floor", "roofline.png")):
        # a panel per (kind, config, dtype) that has the metric (the cost model covers inference only)
        groups = sorted({(r.get("kind", "inference"), r["config"], r["dtype"]) for r in rows
                         if r.get(metric) is not None})
        fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(5 * max(1, len(groups)), 4), squeeze=False)
        for ax, group in zip(axes[0], groups):
            for provider in _ORDER:
                pts = sorted((r["batch"], r[metric], _spread(r, metric)) for r in rows
                             if (r.get("kind", "inference"), r["config"], r["dtype"]) == group
                             and r["provider"] == provider and r.get(metric) is not None)
                if pts:
                    ys = [p[1] for p in pts]
                    err = [[y - (p[2] or (y, y))[0] for y, p in zip(ys, pts)],
                           [(p[2] or (y, y))[1] - y for y, p in zip(ys, pts)]]
                    ax.errorbar([p[0] for p in pts], ys, yerr=err, marker="o", capsize=3, label=provider)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("batch")
            ax.set_ylabel(ylabel)
            devices = sorted({r.get("device", "?") for r in rows if (r.get("kind", "inference"), r["config"],
                                                                        r["dtype"]) == group})
            ax.set_title(" / ".join(group) + "\n" + ", ".join(devices), fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def report(path: str, out_dir: str | os.PathLike | None = None) -> tuple[str, list[Path]]:
    """Write ``<stem>.md`` and the PNGs to ``out_dir`` (default ``./seda_fast_out``); returns
    (markdown, pngs). Speedups are recomputed from the medians the report shows. A GPU run's JSON
    (``benchmarks/gpu_check.py``) gets :mod:`seda_fast.tools.gpu_report`'s report."""
    from .. import outputs
    from . import gpu_report

    if gpu_report.is_gpu_check(json.loads(Path(path).read_text())):
        return gpu_report.report(path, Path(out_dir) if out_dir else outputs.DEFAULT_OUT_DIR)
    rows = load_rows(path)
    if not rows:
        raise ValueError(f"{path}: no benchmark rows with a provider and a median time")
    add_speedups(rows)
    data = json.loads(Path(path).read_text())
    info = data.get("seda_fast_env") or data.get("machine_info", {})  # pytest-benchmark JSON: our env report
    meta = {k: info.get(k) for k in ("gpus", "torch", "triton", "torch_cuda", "driver") if k in info}
    devices = sorted({r["device"] for r in rows if r.get("device")})
    if devices:
        meta["device"] = ", ".join(devices)
    if "datetime" in data:
        meta["date"] = data["datetime"]
    out = Path(out_dir) if out_dir else outputs.DEFAULT_OUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    text = markdown_table(rows, meta)
    (out / (Path(path).stem + ".md")).write_text(text + "\n")
    return text, plot(rows, out)


def main(argv=None) -> int:
    from .. import outputs

    parser = argparse.ArgumentParser(prog="python -m seda_fast bench",
                                     description="benchmark results (also `python -m seda_fast.tools.bench`)")
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="markdown table + PNG plots from a results JSON",
                         description="markdown table <stem>.md, speedup.png and roofline.png from a results JSON "
                                     "(times: pytest-benchmark's median, p20-p80 of its samples)")
    rep.add_argument("results", help="pytest-benchmark --benchmark-json file or gpu_check JSON")
    outputs.add_arguments(rep, "the table and the plots")
    args = parser.parse_args(argv)
    try:
        text, pngs = report(args.results, outputs.out_dir(args))
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(text)
    for p in pngs:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
