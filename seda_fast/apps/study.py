"""Accuracy against training-set size: where does SeDA's text help?

Fixes each dataset's test set and subsamples its training set with a seeded sampler, then trains
every method on the same frozen features, subsets and seeds, under one training-budget rule:

* ``fmnist``: Fashion-MNIST, ``5, 20, 100, 500`` images per class and all of them (6000), test on
  the 10k test images (``--quick``: the demo's 10k / 2k subset, fewer sizes);
* ``emoji-group`` / ``emoji-subgroup``: emoji (:mod:`seda_fast.apps.emoji`, split by emoji), ``1, 2``
  views of every training emoji and all ``4``; test on the canonical view of the unseen emoji.

The training set of seed ``s`` is drawn by a generator seeded with ``s``: per class a random
order of its rows (Fashion-MNIST), or per emoji a random order of its views (emoji); a size keeps
the first rows of that order, so a seed's subsets are nested across sizes. The same subset, model
initialisation and batch order go to every method of that seed. Features are standardised with
the per-dimension mean/std of the whole training pool (label-free, identical for every size and
method).

Methods (``METHODS``):

* ``linear probe`` on ``v``; ``one-step mapping`` (MLP ``v -> t_y`` to the class texts, then a
  head; :mod:`seda_fast.apps.baselines`);
* ``SeDA``: MiniLM texts (class sentences on Fashion-MNIST, each emoji's name on emoji);
* ``SeDA random class vectors``: one random unit vector per class instead of the texts;
* ``SeDA random per-sample vectors`` (emoji only): one random unit vector per emoji, shared by
  its views, like its name's embedding;
* ``SeDA without PFIN``: ``m = z`` through the head. With PFIN removed, stage 2 has nothing that
  reaches the logits except the head: ``z`` is frozen after stage 1, the alignment term then has
  no trainable input and the Translator and text projector do not feed the head. So this row is
  exactly the head trained with cross-entropy on the frozen stage-1 ``z`` (a linear probe on
  ``z``), which the study runs as such; the model itself has no switch for it.

The SeDA rows of one seed share one stage-1 run (saved after stage 1 and reloaded per variant;
the trainer resumes bitwise-identically, so this equals separate runs).

Training budget (``BUDGET``, the same rule for every trained stage of every method: the probe,
the one-step map and its head, SeDA's stage 1 and stage 2, the no-PFIN head): batch
``b = min(batch_size, N)``; target steps ``clip(epochs * ceil(N / b), min_steps, max_steps)``,
rounded to whole epochs. Small sets get many epochs of full-batch steps instead of a few steps.
AdamW, cosine decay, lr and weight decay as in the demo; nothing is tuned per size or method.

Writes ``study.json``, ``study.md`` (tables) and ``study.png`` (accuracy against labelled images
per class, log x, +-1 std bands) to ``--out`` (default ``seda_fast_out/study``), and after every
finished size, so an interrupted run keeps what it measured. ``--update-reference`` also writes
the committed copy ``benchmarks/results/study_<mode>.{json,md,png}``.

Run: ``python -m seda_fast study [--quick] [--seeds N] [--out DIR] [--update-reference]``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import outputs, reference
from . import baselines, data, demo
from ..config import SeDAConfig
from .loop import flush_denormals
from .trainer import Trainer, make_model

PROBE, ONE_STEP, SEDA = "linear probe", "one-step mapping", "SeDA"
RANDOM_CLASS, RANDOM_SAMPLE, NO_PFIN = ("SeDA random class vectors", "SeDA random per-sample vectors",
                                        "SeDA without PFIN")
METHODS = (PROBE, ONE_STEP, SEDA, RANDOM_CLASS, RANDOM_SAMPLE, NO_PFIN)
DATASETS = ("fmnist", "emoji-group", "emoji-subgroup")
OPTIMIZER = dict(lr=1e-3, weight_decay=1e-4)  # the demo's, for every method
MODES = {
    "full": dict(datasets=DATASETS, sizes={"fmnist": (5, 20, 100, 500, None), "emoji": (1, 2, 4)},
                 budget=dict(batch_size=256, epochs=10, min_steps=200, max_steps=600)),
    "quick": dict(datasets=("fmnist", "emoji-group"), sizes={"fmnist": (5, 100), "emoji": (1, 2)},
                  budget=dict(batch_size=256, epochs=10, min_steps=100, max_steps=150)),
}
DEFAULT_OUT = Path("seda_fast_out") / "study"
BUDGET_RULE = ("per trained stage: batch b = min(batch_size, N); steps = clip(epochs * ceil(N / b), min_steps, "
               "max_steps) rounded to whole epochs; the same for the probe, the one-step map and its head, SeDA "
               "stage 1 and stage 2 and the no-PFIN head")
TUNING = [
    "No per-size or per-method tuning: every method uses the demo's optimizer settings (AdamW lr 1e-3, weight "
    "decay 1e-4, cosine decay) and SeDA the demo's CPU config; the demo's tuning notes (the full-data search "
    "within the spec's switches) are in benchmarks/results/demo_*.json.",
]


@dataclass
class StudyData:
    """One dataset of the study: a training pool, a fixed test set, texts and the sizes to try.

    ``size_kind="per_class"``: a size is images per class (``None``: all); ``"views"``: views per
    ``unit`` (emoji) of the training pool. ``sample_text`` (``[N_pool, Dt]`` or ``None``) is the
    per-row text SeDA uses instead of ``class_text``; ``random_sample(seed)`` gives the per-row
    random control (or ``None``: no such method).
    """
    name: str
    title: str
    train: tuple
    test: tuple
    num_classes: int
    class_text: torch.Tensor
    sizes: tuple
    size_kind: str = "per_class"
    sample_text: torch.Tensor | None = None
    unit: torch.Tensor | None = None
    random_sample: object = None
    info: dict = field(default_factory=dict)

    @property
    def methods(self) -> tuple:
        return tuple(m for m in METHODS if m != RANDOM_SAMPLE or self.random_sample is not None)


# --------------------------------------------------------------------------- sampling and budget


def subsample(ds: StudyData, size: int | None, seed: int) -> torch.Tensor:
    """Sorted row indices of the training subset of ``size`` for ``seed`` (nested across sizes)."""
    labels = ds.train[1]
    n = labels.shape[0]
    if size is None:
        return torch.arange(n)
    groups = labels if ds.size_kind == "per_class" else ds.unit
    key = torch.rand(n, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
    order = torch.argsort(key)
    order = order[torch.argsort(groups[order], stable=True)]  # grouped, random within a group
    sorted_groups = groups[order]
    first = torch.searchsorted(sorted_groups, sorted_groups, right=False)
    rank = torch.arange(n) - first
    return torch.sort(order[rank < size]).values


def stage_budget(n: int, budget: dict) -> dict:
    """``{batch_size, epochs, steps}`` of one trained stage on ``n`` rows (see ``BUDGET_RULE``)."""
    batch = min(int(budget["batch_size"]), n)
    per_epoch = math.ceil(n / batch)
    target = min(max(budget["epochs"] * per_epoch, budget["min_steps"]), budget["max_steps"])
    epochs = max(1, round(target / per_epoch))
    return {"batch_size": batch, "epochs": epochs, "steps": epochs * per_epoch}


def _size_label(ds: StudyData, size) -> str:
    if ds.size_kind == "views":
        everything = size >= int(torch.bincount(ds.unit).max())
        return f"{size} view{'' if size == 1 else 's'}" + (" (all)" if everything else "")
    return "all" if size is None else f"{size}/class"


# --------------------------------------------------------------------------- one seed at one size


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_size(ds: StudyData, cfg: SeDAConfig, size, seed: int, budget: dict, workdir: Path,
             progress: bool = False, optimizer: dict = OPTIMIZER) -> dict:
    """Train every method of ``ds`` on the subset (``size``, ``seed``); ``{method: {accuracy, train_seconds}}``."""
    idx = subsample(ds, size, seed)
    v, y = ds.train[0][idx], ds.train[1][idx]
    stage = stage_budget(idx.numel(), budget)
    common = dict(batch_size=stage["batch_size"], seed=seed, progress=progress, **optimizer)
    C, out = ds.num_classes, {}

    probe, sec = _timed(lambda: baselines.train_linear_probe(v, y, C, epochs=stage["epochs"], **common)[0])
    out[PROBE] = {"accuracy": baselines.accuracy(probe, *ds.test), "train_seconds": sec}
    one, sec = _timed(lambda: baselines.train_one_step_mapping(
        v, y, ds.class_text, hidden=cfg.hidden, map_epochs=stage["epochs"], head_epochs=stage["epochs"],
        **common)[0])
    out[ONE_STEP] = {"accuracy": baselines.accuracy(one, *ds.test), "train_seconds": sec}

    # SeDA: one stage-1 run, saved and resumed once per stage-2 variant.
    text_kind = "class" if ds.sample_text is None else "sample"
    real_text = ds.class_text if ds.sample_text is None else ds.sample_text[idx]
    texts = {SEDA: (real_text, text_kind),
             RANDOM_CLASS: (data.random_class_features(C, ds.class_text.shape[1], seed=1000 + seed), "class")}
    if ds.random_sample is not None:
        texts[RANDOM_SAMPLE] = (ds.random_sample(seed)[idx], "sample")
    model = make_model(cfg, seed=seed)
    trainer = Trainer(model, stage1_epochs=stage["epochs"], stage2_epochs=stage["epochs"], **common)
    _, stage1_sec = _timed(lambda: trainer.fit(v, y, real_text, text_kind=text_kind, max_epochs=stage["epochs"]))
    ckpt = trainer.save(workdir / f"stage1-{seed}.pt")
    for method, (text, kind) in texts.items():
        resumed = Trainer.load(ckpt, progress=progress)
        _, sec = _timed(lambda: resumed.fit(v, y, text, text_kind=kind))
        out[method] = {"accuracy": resumed.evaluate(*ds.test), "train_seconds": stage1_sec + sec}
    ckpt.unlink()

    # Without PFIN: m = z, so only the head on the frozen stage-1 z trains (module doc).
    with torch.no_grad():
        z, z_test = (reference.project(model.visual_proj, x) for x in (v, ds.test[0]))
    head, sec = _timed(lambda: baselines.train_linear_probe(z, y, C, epochs=stage["epochs"], **common)[0])
    out[NO_PFIN] = {"accuracy": baselines.accuracy(head, z_test, ds.test[1]), "train_seconds": stage1_sec + sec}
    return {"rows": int(idx.numel()), "budget": stage, "methods": out}


# --------------------------------------------------------------------------- summaries


def _mean_std(values) -> tuple[float, float]:
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise_size(per_seed: list[dict], methods) -> dict:
    """Mean / std per method, paired differences of SeDA against the probe and the controls."""
    results = {}
    for m in methods:
        accs = [r["methods"][m]["accuracy"] for r in per_seed]
        mean, std = _mean_std(accs)
        results[m] = {"accuracy_mean": mean, "accuracy_std": std,
                      "train_seconds_mean": statistics.fmean(r["methods"][m]["train_seconds"] for r in per_seed),
                      "per_seed": [{"seed": r["seed"], **r["methods"][m]} for r in per_seed]}
    paired = {}
    for other in (PROBE, RANDOM_CLASS, RANDOM_SAMPLE, NO_PFIN):
        if other in methods:
            mean, std = _mean_std(r["methods"][SEDA]["accuracy"] - r["methods"][other]["accuracy"] for r in per_seed)
            paired[f"{SEDA} - {other}"] = {"mean": mean, "std": std}
    return {"results": results, "paired_differences": paired}


def verdict(entry: dict) -> dict:
    """SeDA against the probe and against random vectors at one size, by the 2-std rule:
    ``mean(A) - mean(B) > 2 * max(std(A), std(B))`` (std over seeds)."""
    res = entry["results"]

    def beats(a, b):
        gap = res[a]["accuracy_mean"] - res[b]["accuracy_mean"]
        return {"difference": gap, "threshold": 2 * max(res[a]["accuracy_std"], res[b]["accuracy_std"]),
                "beats": gap > 2 * max(res[a]["accuracy_std"], res[b]["accuracy_std"])}

    out = {"SeDA vs linear probe": beats(SEDA, PROBE)}
    for control in (RANDOM_CLASS, RANDOM_SAMPLE):
        if control in res:
            out[f"SeDA vs {control}"] = beats(SEDA, control)
    return out


def _column(size: dict) -> str:
    per_class = "" if size["label"].endswith("/class") else f"{size['per_class']:.4g}/class, "
    return f"{size['label']} ({per_class}{size['budget']['steps']} steps)"


def _note_pools(entry: dict) -> None:
    """After a merge: when the sizes of one dataset were drawn from different training pools (e.g.
    the small sizes from a 10k pool, "all" from all 60k), say so in its title and ``train_pool``."""
    pools = sorted({s["train_pool"] for s in entry["sizes"] if "train_pool" in s})
    if len(pools) < 2:
        return
    by_pool = "; ".join(f"{', '.join(s['label'] for s in entry['sizes'] if s.get('train_pool') == pool)} from "
                        f"the first {pool} train images" for pool in pools)
    entry["train_pool"] = pools
    entry["title"] = entry["title"].split(" (")[0] + f" ({by_pool} / {entry['test']} test)"


def format_tables(results: dict) -> str:
    """Markdown: one table per dataset (methods x sizes, accuracy % mean ± std), then the verdicts."""
    lines = []
    for ds in results["datasets"].values():
        sizes = ds["sizes"]
        if not sizes:
            continue
        lines += [f"**{ds['title']}**: accuracy % (mean ± std over {len(results['seeds'])} seeds); columns: "
                  "labelled training images (per class on average), steps per trained stage", "",
                  "| method | " + " | ".join(_column(s) for s in sizes) + " |",
                  "|---|" + "---|" * len(sizes)]
        for m in ds["methods"]:
            cells = [f"{100 * s['results'][m]['accuracy_mean']:.2f} ± {100 * s['results'][m]['accuracy_std']:.2f}"
                     for s in sizes]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        for name in sizes[0]["verdict"]:
            cells = []
            for s in sizes:
                v = s["verdict"][name]
                cells.append(f"{100 * v['difference']:+.2f} ({'yes' if v['beats'] else 'no'})")
            lines.append(f"| *{name}: difference (> 2 std?)* | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(f"{results['mode']} run, {results['wall_seconds']:.0f} s wall, {results['torch_threads']} torch "
                 f"thread(s), {results['cpu_count']} CPUs, torch {results['torch']}, {results['date']}.")
    if results.get("missing"):
        lines.append("Not measured: " + ", ".join(results["missing"]) + ".")
    if "parts" in results:
        parts = "; ".join(f"{', '.join(p['datasets'])} {p['wall_seconds']:.0f} s" for p in results["parts"])
        lines.append(f"Ran as {len(results['parts'])} processes (wall: the longest; "
                     f"{results['span_seconds']:.0f} s from the first start to the last end): {parts}.")
    return "\n".join(lines)


def _band(ax, x, mean, std, color, style, label):
    line, = ax.plot(x, mean, style, marker="o", ms=3, label=label, color=color)
    ax.fill_between(x, [a - b for a, b in zip(mean, std)], [a + b for a, b in zip(mean, std)],
                    color=color, alpha=0.15, linewidth=0)
    return line


def plot(results: dict, path: str | os.PathLike) -> Path:
    """Top row: accuracy against labelled images per class (log x), one panel per dataset, ±1 std
    bands over the seeds. Bottom row: each method minus the linear probe, paired by seed (same
    subset), mean ± 1 std of those differences."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [d for d in results["datasets"].values() if d["sizes"]]
    n = max(1, len(panels))
    fig, axes = plt.subplots(2, n, figsize=(5.2 * n, 8.0), squeeze=False, sharex="col",
                             gridspec_kw={"height_ratios": [3, 2]})
    colors = dict(zip(METHODS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    handles = {}
    for col, ds in enumerate(panels):
        top, bottom = axes[0][col], axes[1][col]
        x = [s["per_class"] for s in ds["sizes"]]
        for m in ds["methods"]:
            style = "--" if m in (PROBE, ONE_STEP) else "-"
            handles[m] = _band(top, x, [100 * s["results"][m]["accuracy_mean"] for s in ds["sizes"]],
                               [100 * s["results"][m]["accuracy_std"] for s in ds["sizes"]], colors[m], style, m)
            if m in (PROBE, ONE_STEP):
                continue
            diffs = [_mean_std(100 * (a["accuracy"] - b["accuracy"]) for a, b in
                               zip(s["results"][m]["per_seed"], s["results"][PROBE]["per_seed"])) for s in ds["sizes"]]
            _band(bottom, x, [d[0] for d in diffs], [d[1] for d in diffs], colors[m], style, m)
        bottom.axhline(0.0, color=colors[PROBE], linestyle="--", linewidth=1)
        for ax in (top, bottom):
            ax.set_xscale("log")
            ax.set_xticks(x, [f"{v:.3g}" for v in x])
            ax.minorticks_off()
            ax.grid(True, alpha=0.3)
        top.set_title(ds["title"], fontsize=10)
        top.set_ylabel("test accuracy (%)")
        bottom.set_ylabel("minus linear probe (points, paired)")
        bottom.set_xlabel("labelled training images per class")
    fig.legend([handles[m] for m in METHODS if m in handles], [m for m in METHODS if m in handles],
               loc="lower center", ncol=min(6, len(handles)), fontsize=8, frameon=False)
    fig.suptitle(f"SeDA study ({results['mode']}): mean ± 1 std over {len(results['seeds'])} seeds", fontsize=11)
    fig.subplots_adjust(left=0.06, right=0.99, top=0.93, bottom=0.1, wspace=0.22, hspace=0.08)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- datasets


def load_datasets(mode: str, names, cache=None, progress: bool = True,
                  fmnist_pool: int | None = None) -> list[StudyData]:
    """The study's real datasets (features from the demo's cached pipeline). ``fmnist_pool``: draw
    the Fashion-MNIST subsets from the first that many training images (default: the mode's)."""
    sizes = MODES[mode]["sizes"]
    out = []
    for name in names:
        if name == "fmnist":
            ds = demo.fmnist_data(mode == "quick", cache, progress, train=fmnist_pool)
            out.append(StudyData(
                name=name, title=f"Fashion-MNIST ({ds.train[0].shape[0]} train pool / {ds.test[0].shape[0]} test)",
                train=ds.train, test=ds.test, num_classes=ds.num_classes,
                class_text=ds.class_text, sizes=sizes["fmnist"], info=ds.info))
        else:
            level = name.split("-", 1)[1]
            ds = demo.emoji_data(level, cache, progress)
            info = ds.info
            out.append(StudyData(
                name=name, title=f"Emoji by {level} ({ds.num_classes} classes, {info['train_emoji']} train "
                                 f"/ {info['test_emoji']} test emoji)",
                train=ds.train, test=ds.test, num_classes=ds.num_classes,
                class_text=ds.class_text, sizes=sizes["emoji"], size_kind="views",
                sample_text=ds.seda_text, random_sample=ds.random_text,
                # emoji_dataset's train rows are emoji-major: row e * views + k
                unit=torch.arange(info["train_emoji"]).repeat_interleave(info["views"]), info=info))
    return out


# --------------------------------------------------------------------------- driver


def _write(results: dict, out: Path, stem: str = "study", with_plot: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    paths[0].write_text(json.dumps(results, indent=2) + "\n")
    paths[1].write_text(format_tables(results) + "\n")
    if with_plot:
        paths.append(plot(results, out / f"{stem}.png"))
    return paths


def run(datasets: list[StudyData], mode: str = "full", seeds: int = 3, out: str | os.PathLike | None = None,
        update_reference: bool = False, budget: dict | None = None, config: dict | None = None,
        optimizer: dict | None = None, progress: bool = False, log=print) -> dict:
    """Run the study on ``datasets``; writes ``study.{json,md,png}`` to ``out`` (default
    ``seda_fast_out/study``) and, with ``update_reference``, ``benchmarks/results/study_<mode>.*``."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be an int >= 1, got {seeds!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {tuple(MODES)}, got {mode!r}")
    budget = dict(MODES[mode]["budget"] if budget is None else budget)
    config = dict(demo.SEDA_CONFIG if config is None else config)
    optimizer = dict(OPTIMIZER if optimizer is None else optimizer)
    out = Path(DEFAULT_OUT if out is None else out)
    wall = time.perf_counter()
    results = {
        "mode": mode, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": str(torch.__version__), "python": platform.python_version(), "machine": platform.machine(),
        "processor": platform.processor(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "seeds": list(range(seeds)), "budget": {**budget, "rule": BUDGET_RULE}, "optimizer": optimizer,
        "seda_config": config, "tuning": TUNING,
        "criterion": "A beats B when mean(A) - mean(B) > 2 * max(std(A), std(B)) over the seeds",
        "datasets": {}, "wall_seconds": 0.0, "complete": False,
    }
    with tempfile.TemporaryDirectory(prefix="seda_study_") as tmp:
        for ds in datasets:
            cfg = SeDAConfig(visual_dim=ds.train[0].shape[1], text_dim=ds.class_text.shape[1],
                             num_classes=ds.num_classes, **config)
            entry = results["datasets"][ds.name] = {
                "title": ds.title, "size_kind": ds.size_kind, "methods": list(ds.methods),
                "train_pool": int(ds.train[0].shape[0]), "test": int(ds.test[0].shape[0]),
                "num_classes": ds.num_classes, "data": ds.info, "sizes": []}
            for size in ds.sizes:
                start, per_seed = time.perf_counter(), []
                for seed in range(seeds):
                    row = run_size(ds, cfg, size, seed, budget, Path(tmp), progress, optimizer)
                    per_seed.append({"seed": seed, **row})
                    log(f"  {ds.name} {_size_label(ds, size):>14} seed {seed}: " + "  ".join(
                        f"{m} {100 * r['accuracy']:.2f}" for m, r in row["methods"].items()))
                size_entry = {"size": size, "label": _size_label(ds, size), "rows": per_seed[0]["rows"],
                              "train_pool": int(ds.train[0].shape[0]),
                              "per_class": per_seed[0]["rows"] / ds.num_classes, "budget": per_seed[0]["budget"],
                              **summarise_size(per_seed, ds.methods), "seconds": time.perf_counter() - start}
                size_entry["verdict"] = verdict(size_entry)
                entry["sizes"].append(size_entry)
                results["wall_seconds"] = time.perf_counter() - wall
                _write(results, out, with_plot=False)  # keep what is measured if the run stops
    results["wall_seconds"] = time.perf_counter() - wall
    results["complete"] = True
    written = _write(results, out)
    if update_reference:
        written += _write(results, outputs.REFERENCE_DIR, stem=f"study_{mode}")
    log("\n" + format_tables(results))
    log("\nwrote " + ", ".join(str(p) for p in written))
    return results


def missing_sizes(results: dict) -> list[str]:
    """``"dataset size"`` of every size of the mode (``MODES``) that ``results`` does not hold."""
    spec = MODES[results["mode"]]
    missing = []
    for name in spec["datasets"]:
        done = {s["size"] for s in results["datasets"].get(name, {}).get("sizes", [])}
        wanted = spec["sizes"]["fmnist" if name == "fmnist" else "emoji"]
        missing += [f"{name} {'all' if size is None else size}" for size in wanted if size not in done]
    return missing


def merge(folders, out: str | os.PathLike | None = None, update_reference: bool = False, log=print) -> dict:
    """Combine the ``study.json`` of runs on disjoint datasets or sizes (e.g. run side by side with
    ``--datasets`` / ``--sizes``) into one result, written like :func:`run` writes its own. A part
    may be an interrupted run: its finished sizes count. The parts must share the mode, seeds,
    budget, optimizer and SeDA config; the wall time is the longest part's, ``span_seconds`` from
    the first part's start to the last part's end; ``complete`` says
    whether every size of the mode is there (``missing`` lists the others)."""
    parts = [json.loads((Path(f) / "study.json").read_text()) for f in folders]
    if not parts:
        raise ValueError("merge needs at least one folder holding a study.json")
    same = ("mode", "seeds", "budget", "optimizer", "seda_config")
    for f, part in zip(folders, parts):
        diff = [k for k in same if part[k] != parts[0][k]]
        if diff:
            raise ValueError(f"{f}/study.json differs from {folders[0]}/study.json in {diff}")
    merged = {**parts[0], "datasets": {}, "parts": []}
    for f, part in zip(folders, parts):
        for name, entry in part["datasets"].items():
            if name not in merged["datasets"]:
                merged["datasets"][name] = {**entry, "sizes": list(entry["sizes"])}
                continue
            sizes = merged["datasets"][name]["sizes"]
            repeated = {s["label"] for s in sizes} & {s["label"] for s in entry["sizes"]}
            if repeated:
                raise ValueError(f"{f}/study.json repeats {name} sizes {sorted(repeated)}")
            sizes += entry["sizes"]
            sizes.sort(key=lambda s: s["per_class"])
            _note_pools(merged["datasets"][name])
        merged["parts"] += part.get("parts") or [  # a part that is itself a merge brings its own parts
            {"folder": str(f), "datasets": list(part["datasets"]), "date": part["date"],
             "wall_seconds": part["wall_seconds"], "torch_threads": part["torch_threads"], "complete": part["complete"]}]
    order = {name: i for i, name in enumerate(DATASETS)}
    merged["datasets"] = dict(sorted(merged["datasets"].items(), key=lambda kv: order.get(kv[0], len(order))))
    merged["wall_seconds"] = max(p["wall_seconds"] for p in parts)
    starts = [_dt.datetime.fromisoformat(p["date"]).timestamp() for p in parts]
    merged["date"] = min(parts, key=lambda p: p["date"])["date"]
    merged["span_seconds"] = max(t + p.get("span_seconds", p["wall_seconds"]) for t, p in zip(starts, parts)) \
        - min(starts)
    merged["missing"] = missing_sizes(merged)
    merged["complete"] = not merged["missing"]
    written = _write(merged, Path(DEFAULT_OUT if out is None else out))
    if update_reference:
        written += _write(merged, outputs.REFERENCE_DIR, stem=f"study_{merged['mode']}")
    log(format_tables(merged) + "\n\nwrote " + ", ".join(str(p) for p in written))
    return merged


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seda_fast study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="Fashion-MNIST 10k/2k subset at 5 and 100 per class and emoji groups at 1 and 2 "
                             "views, 100-150 steps per stage, 2 seeds unless --seeds (< 5 min on 2 cores)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; --quick: 2)")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=None,
                        help="datasets to run (default: all three; --quick: fmnist emoji-group)")
    parser.add_argument("--out", default=None, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--update-reference", action="store_true",
                        help="also write the committed copy benchmarks/results/study_<mode>.{json,md,png}")
    parser.add_argument("--merge", nargs="+", metavar="DIR", default=None,
                        help="instead of running, combine the study.json of finished runs on disjoint "
                             "--datasets / --sizes")
    parser.add_argument("--sizes", nargs="+", default=None, metavar="N|all",
                        help="only these sizes (images per class, or views per emoji; 'all': the whole pool)")
    parser.add_argument("--fmnist-pool", type=int, default=None, metavar="N",
                        help="draw the Fashion-MNIST subsets from the first N training images (default: all "
                             "60000; --quick: 10000); 'all' is then those N")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--cache", default=None, help="cache folder (default $SEDA_FAST_CACHE or ~/.cache/seda_fast)")
    parser.add_argument("--progress", action="store_true", help="show tqdm bars")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    if args.seeds is not None and args.seeds < 1:  # before any data loads
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    pool = data.SUBSETS["train"][2]
    if args.fmnist_pool is not None and not 1 <= args.fmnist_pool <= pool:
        parser.error(f"--fmnist-pool must be in [1, {pool}] (Fashion-MNIST's training images), got {args.fmnist_pool}")
    # As in the demo: denormal Adam states late in a cosine decay slow CPUs down; flushing them is
    # process-global, so it holds only while the command runs.
    with flush_denormals():
        if args.merge:
            merge(args.merge, out=args.out, update_reference=args.update_reference)
            return 0
        mode = "quick" if args.quick else "full"
        seeds = args.seeds if args.seeds is not None else (2 if args.quick else 3)
        names = args.datasets or MODES[mode]["datasets"]
        sizes = None
        if args.sizes:
            try:
                sizes = tuple(None if x == "all" else int(x) for x in args.sizes)
            except ValueError:
                parser.error(f"--sizes takes positive integers or 'all', got {args.sizes}")
            if any(x is not None and x < 1 for x in sizes):
                parser.error(f"--sizes takes positive integers or 'all', got {args.sizes}")
        datasets = load_datasets(mode, names, cache=args.cache, progress=args.progress, fmnist_pool=args.fmnist_pool)
        for ds in datasets:
            ds.sizes = sizes or ds.sizes
        run(datasets, mode=mode, seeds=seeds, out=args.out, update_reference=args.update_reference,
            progress=args.progress)
        return 0
