"""Peak memory of one training step's loss + backward, eager vs fused (stage 2, over a sweep).

``python -m seda_fast memory [--json PATH]`` (or ``python -m seda_fast.tools.memory``) measures the
stage-2 step (the K2-step unroll is where eager autograd keeps O(K B (L + 3) H) activations) on a
sweep of K, B, d, H around the default config, on CPU, for eager and for each fused unroll
(:data:`FUSED`): the row-block kernels and the phase kernels under each activation policy
(``"save"`` keeps every step's activations, ``"recompute"`` only the per-step states, O(K B d)):

* Peak = the largest number of bytes allocated above the level at the start of the step, from
  ``loss = model.translator_loss(...)`` to the end of ``loss.backward()`` (parameter gradients are
  set to None before, so both backends allocate them inside the window; the constant tables
  cached on the device are built by a small step before it). On CUDA:
  ``torch.cuda.max_memory_allocated``; on CPU: the allocator's running total in
  ``torch.profiler``'s allocation events (``profile_memory=True``).
* The fused path on CPU: the Triton interpreter allocates no torch memory of its own, so the
  launchers' allocations are the whole story, and the sweep does not run the kernels
  (``capture_launches(keep_args=False)``: the same allocations, no interpreter time).
  ``tests/core/test_triton_training.py`` checks that a real interpreted run reaches the same peak to the
  byte once the interpreter's lingering host views of kernel arguments are collected.
* ``saved_states_mib``: what a recomputing unroll keeps from forward to backward, ``xs`` and
  ``ms``, ``(2 K + 1) B d`` values (fp32 here); the rest of its peak is the per-step workspace,
  the fp32 weight-gradient accumulators and the parameter gradients.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
from pathlib import Path

import torch

from ..config import SeDAConfig
from ..model import SeDA


def allocation_events(fn) -> list[int]:
    """The CPU allocator's allocations (+bytes) and frees (-bytes) while ``fn()`` runs, in time order
    (``torch.profiler`` with ``profile_memory=True``)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.typed[0] == _EventType.Allocation and event.typed[1].device.type == "cpu":
            events.append((event.start_time_ns, event.typed[1].alloc_size))
    return [size for _, size in sorted(events)]


def running_peak(events: list[int]) -> int:
    """Largest running sum of :func:`allocation_events` (bytes above the starting level)."""
    peak = level = 0
    for size in events:
        level += size
        peak = max(peak, level)
    return peak


def peak_bytes(fn, device: torch.device) -> int:
    """Peak bytes allocated above the starting level while ``fn()`` runs on ``device``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    # from the events, not their total_allocated field, which drifts across profiling sessions
    return running_peak(allocation_events(fn))


def stage2_step(model, visual, labels, text, generator=None, run_kernels: bool = True):
    """A callable running one stage-2 ``translator_loss(...).backward()`` of ``model`` (put in stage 2,
    gradients reset to None first, so each call allocates them anew); ``run_kernels=False`` captures
    the fused launches instead of running them (CPU sizing)."""
    from ..ops import runtime

    def step():
        model.set_stage(2)
        for p in model.parameters():
            p.grad = None
        capture = contextlib.nullcontext() if run_kernels or model.backend == "eager" \
            else runtime.kernels().capture_launches(keep_args=False)
        with capture:
            model.translator_loss(visual, labels, text, generator=generator).backward()
    return step


def stage2_step_peak(model, visual, labels, text, generator=None, run_kernels: bool = True) -> int:
    """Peak bytes of one :func:`stage2_step`, after a two-row step has built the constant tables
    every step reads from the device cache (:func:`seda_fast.schedule.device_cached`): a training
    run pays for them once, not per step."""
    stage2_step(model, visual[:2], labels[:2], text, generator, run_kernels)()
    for p in model.parameters():
        p.grad = None
    gc.collect()  # its gradients and cyclic garbage freed now, not inside the measured window
    return peak_bytes(stage2_step(model, visual, labels, text, generator, run_kernels), visual.device)


# the fused stage-2 unrolls measured: name -> (SeDA.fused_impl, SeDA.activation_memory)
FUSED = {"rowblock": ("rowblock", None), "phases_save": ("phases", "save"), "phases_recompute": ("phases", "recompute")}


def sweep(device: torch.device, cases, run_kernels: bool = False, seed: int = 0, fused=tuple(FUSED)) -> list[dict]:
    """One row per ``(K, B, d, H)``: eager's peak and each ``fused`` unroll's (MiB), and their ratios."""
    rows = []
    for K, B, d, H in cases:
        cfg = SeDAConfig(visual_dim=1280, text_dim=384, num_classes=10, dim=d, hidden=H, learner_steps=K,
                         translator_steps=K)
        row = {"K": K, "B": B, "d": d, "H": H, "L": cfg.layers}
        for name in ("eager",) + tuple(fused):
            torch.manual_seed(seed)
            model = SeDA(cfg, backend="eager" if name == "eager" else "triton").to(device).train()
            if name != "eager":
                model.fused_impl, model.activation_memory = FUSED[name]
            g = torch.Generator(device=device).manual_seed(seed)
            visual = torch.randn(B, cfg.visual_dim, device=device, generator=g)
            labels = torch.randint(0, cfg.num_classes, (B,), device=device, generator=g)
            text = torch.randn(cfg.num_classes, cfg.text_dim, device=device, generator=g)
            row[f"{name}_mib"] = stage2_step_peak(model, visual, labels, text, g, run_kernels) / 2**20
        for name in fused:
            row[f"{name}_over_eager"] = row[f"{name}_mib"] / row["eager_mib"]
        row["saved_states_mib"] = (2 * K + 1) * B * d * 4 / 2**20
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return rows


DEFAULT_CASE = (10, 256, 512, 1024)
SWEEP = [DEFAULT_CASE, (1, 256, 512, 1024), (4, 256, 512, 1024), (20, 256, 512, 1024), (10, 64, 512, 1024),
         (10, 1024, 512, 1024), (10, 4096, 512, 1024), (10, 256, 256, 1024), (10, 256, 512, 2048),
         (10, 256, 512, 512)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seda_fast memory", description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="write the rows (with device and versions) to this path")
    parser.add_argument("--run-kernels", action="store_true",
                        help="run the fused kernels instead of capturing their launches (slow in the interpreter)")
    args = parser.parse_args(argv)
    from ..ops import runtime
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run = args.run_kernels or device.type == "cuda"
    if device.type == "cpu" and not runtime.interpreter_enabled():
        parser.error("on CPU the fused path needs TRITON_INTERPRET=1")
    rows = sweep(device, SWEEP, run_kernels=run)
    if args.json:
        import datetime

        import triton
        Path(args.json).write_text(json.dumps({
            "date": datetime.date.today().isoformat(),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.machine()})",
            "versions": {"torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version()},
            "fused_kernels_run": run,
            "what": "peak bytes above the start of translator_loss + backward, fp32, C=10, Dv=1280, Dt=384, L=2",
            "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
