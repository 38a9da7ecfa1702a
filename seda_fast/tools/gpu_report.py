"""Report of one GPU run (``benchmarks/gpu_check.py``'s JSON): markdown tables and a plot.

``python -m seda_fast bench report gpu_check.json [--out DIR]`` lands here. The ceilings the run
measured replace the cost model's assumed ones (:meth:`seda_fast.tools.cost_model.Ceilings.from_gpu_check`),
so every floor and ``time / floor`` in the tables is computed against the device the run was on.
Speedups are ratios of medians from the same run. A dry run's figures (CPU, Triton interpreter)
are labelled so and never replace a ceiling.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import cost_model
from ..config import SeDAConfig

KIND = "seda_fast.gpu_check"


def _ceiling_rows():
    """``(micro row name, Ceilings field, factor, unit)`` for every figure a GPU run measures
    (:attr:`Ceilings._FROM_MICRO`, in its order)."""
    for name, (fld, factor) in cost_model.Ceilings._FROM_MICRO.items():
        unit = "us" if factor < 1 else ("TFLOP/s" if fld.endswith("flops") else "TB/s")
        yield name, fld, factor, unit


def is_gpu_check(doc: dict) -> bool:
    return doc.get("kind") == KIND


def load(path) -> dict:
    doc = json.loads(Path(path).read_text())
    if not is_gpu_check(doc):
        raise ValueError(f"{path}: not a gpu_check JSON (kind {doc.get('kind')!r})")
    return doc


def _f(x, spec=".3g") -> str:
    return "–" if x is None else format(x, spec)


def _rows(doc, section, status="ok"):
    return [r for r in doc["rows"] if r.get("section") == section and (status is None or r.get("status") == status)]


def ceilings(doc) -> cost_model.Ceilings:
    return cost_model.H200.from_gpu_check(doc["rows"], run=f"GPU run {doc.get('date', '')[:10]}")


def markdown(doc) -> str:
    env = next(iter(_rows(doc, "env")), {})
    versions = env.get("versions", {})
    ceil = ceilings(doc)
    lines = [f"# GPU run {doc.get('date', '?')}", "",
             f"device: {env.get('device', '?')} ({env.get('capability', '?')}, {env.get('sms', '?')} SMs, "
             f"L2 {_f((env.get('l2_bytes') or 0) / 2**20, '.0f')} MiB) · torch {versions.get('torch', '?')} · "
             f"triton {versions.get('triton', '?')} · CUDA {env.get('cuda', '?')} · driver {versions.get('driver', '?')} "
             f"· status {doc.get('status')} · {_f(doc.get('seconds'), '.0f')} s of a {_f(doc.get('budget_s'), '.0f')} s "
             "budget" + (" · **dry run: CPU interpreter figures, not device claims**" if doc.get("dry_run") else ""),
             "", "## Ceilings and sync costs", "", "| figure | H200 default | this run | unit | source |",
             "|---|---:|---:|---|---|"]
    micro = {r["name"]: r for r in _rows(doc, "micro", None)}
    default = cost_model.H200
    for name, fld, scale, unit in _ceiling_rows():
        row = micro.get(name, {})
        got = row.get("value") if row.get("status") == "ok" else None
        lines.append(f"| {name} | {_f(getattr(default, fld) / scale)} | {_f(got)} | {unit} "
                     f"| {dict(ceil.source)[fld]}{'' if got is not None or not row else ' (' + row.get('status', '') + ')'} |")
    pdl = micro.get("pdl", {})
    if pdl:
        lines.append(f"| pdl | – | {_f(pdl.get('with_pdl_us'))} (without: {_f(pdl.get('without_pdl_us'))}) | us per "
                     f"dependent kernel | works: {pdl.get('works', pdl.get('skipped', pdl.get('error')))} |")

    infer = _rows(doc, "inference")
    if infer:
        cfg = SeDAConfig(**doc["config"])
        lines += ["", "## Inference (median ms over synchronised calls; speedup = other's median / this one's)", "",
                  "| dtype | B | provider | median ms | p20-p80 | vs eager | vs CUDA graph | vs torch.compile "
                  "| floor ms | time / floor | max abs err vs fp32 |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        index = {(r["dtype"], r["batch"], r["provider"]): r for r in infer}
        for r in sorted(infer, key=lambda r: (r["dtype"], r["batch"], r["provider"])):
            floor = cost_model.inference_cost(cfg, r["batch"], r["dtype"], ceil).floor_s * 1e3

            def vs(base):
                other = index.get((r["dtype"], r["batch"], base))
                return _f(other["median_ms"] / r["median_ms"], ".2f") if other and other is not r else "–"
            label = r["provider"] + (f" ({r['compile_mode']})" if r.get("compile_mode") else "")
            lines.append(f"| {r['dtype']} | {r['batch']} | {label} | {_f(r['median_ms'], '.4g')} "
                         f"| {_f(r['p20_ms'])}-{_f(r['p80_ms'])} | {vs('eager')} | {vs('cuda_graph')} "
                         f"| {vs('torch_compile')} | {_f(floor)} | {_f(r['median_ms'] / floor, '.1f')} "
                         f"| {_f(r.get('max_abs_err_vs_fp32'), '.2e')} |")
    train = _rows(doc, "training")
    if train:
        lines += ["", "## Training steps (loss + backward + AdamW)", "",
                  "| stage | B | amp | provider | median ms | p20-p80 | vs eager | vs torch.compile | peak MB "
                  "| loss rel err vs fp32 | max grad rel err |", "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        index = {(r["stage"], r["batch"], r["provider"]): r for r in train}
        for r in sorted(train, key=lambda r: (r["stage"], r["batch"], r["provider"])):
            def vs(base):
                other = index.get((r["stage"], r["batch"], base))
                return _f(other["median_ms"] / r["median_ms"], ".2f") if other and other is not r else "–"
            lines.append(f"| {r['stage']} | {r['batch']} | {r['amp']} | {r['provider']} | {_f(r['median_ms'], '.4g')} "
                         f"| {_f(r['p20_ms'])}-{_f(r['p80_ms'])} | {vs('eager')} | {vs('torch_compile')} "
                         f"| {_f(r.get('peak_mb'), '.1f')} | {_f(r.get('loss_rel_err_vs_fp32'), '.1e')} "
                         f"| {_f(r.get('max_grad_rel_err_vs_fp32'), '.1e')} |")
    tests = _rows(doc, "tests", None)
    if tests:
        lines += ["", "## GPU test files", "", "| file | status | summary | s |", "|---|---|---|---:|"]
        lines += [f"| {r['file']} | {r['status']} | {r.get('summary', '')} | {_f(r.get('seconds'), '.0f')} |"
                  for r in tests]
    problems = [r for r in doc["rows"] if r.get("status") in ("error", "timeout", "skipped", "failed")]
    if problems:
        lines += ["", "## Not measured", ""]
        for r in problems:
            what = r.get("provider") or r.get("name") or r.get("file") or ""
            why = r.get("error") or r.get("reason") or r.get("summary") or ""
            lines.append(f"- {r['job']} {what} {r.get('batch', '')}: {r['status']}: {why}".replace("  ", " "))
    return "\n".join(lines) + "\n"


def plot(doc, path: Path) -> Path | None:
    """Inference median ms against batch, one line per provider, p20-p80 error bars, a panel per dtype."""
    infer = _rows(doc, "inference")
    if not infer:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    dtypes = sorted({r["dtype"] for r in infer})
    fig, axes = plt.subplots(1, len(dtypes), figsize=(5.5 * len(dtypes), 4), squeeze=False)
    for ax, dtype in zip(axes[0], dtypes):
        for provider in sorted({r["provider"] for r in infer if r["dtype"] == dtype}):
            pts = sorted((r["batch"], r["median_ms"], r["p20_ms"], r["p80_ms"]) for r in infer
                         if r["dtype"] == dtype and r["provider"] == provider)
            xs, med = [p[0] for p in pts], [p[1] for p in pts]
            err = [[m - p[2] for m, p in zip(med, pts)], [p[3] - m for m, p in zip(med, pts)]]
            ax.errorbar(xs, med, yerr=err, marker="o", capsize=3, label=provider)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch")
        ax.set_ylabel("median ms per call (p20-p80 bars)")
        env = next(iter(_rows(doc, "env")), {})
        ax.set_title(f"inference {dtype}\n{env.get('device', '?')}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report(path, out_dir) -> tuple[str, list[Path]]:
    """Write ``<stem>.md`` and ``<stem>_inference.png`` into ``out_dir``; returns (markdown, pngs)."""
    doc = load(path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(doc)
    stem = Path(path).stem
    (out / f"{stem}.md").write_text(text)
    png = plot(doc, out / f"{stem}_inference.png")
    return text, [png] if png else []
