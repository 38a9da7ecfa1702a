"""Command line: ``python -m seda_fast <command> [options]``.

A small dispatcher: each command is a module with ``main(argv) -> int``, imported only when
chosen. Add a command by adding a line to ``COMMANDS``. The modules' own entry points
(``python -m seda_fast.tools.bench report ...``, ``python -m seda_fast.tools.memory``, ...) do the same.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "demo": ("seda_fast.apps.demo", "real-data accuracy demo: Fashion-MNIST (--quick: 10k subset) or --dataset emoji"),
    "study": ("seda_fast.apps.study", "accuracy against training-set size: SeDA, its text controls and baselines (--quick)"),
    "env": ("seda_fast.tools.envinfo", "environment report (OS, Python, torch, triton, CUDA, GPU, driver) for bug reports"),
    "bench": ("seda_fast.tools.bench", "benchmark results: `bench report RESULTS.json` writes a markdown table + plots"),
    "memory": ("seda_fast.tools.memory", "peak memory of a stage-2 training step, eager vs fused, over a sweep"),
    "compile-report": ("seda_fast.tools.compile_report",
                       "compile every shipped kernel config for sm_90a: registers, spills, shared memory"),
    "cost-model": ("seda_fast.tools.cost_model",
                   "predicted time of one inference call per implementation and baseline, and its floor (H200)"),
    "cost-training": ("seda_fast.tools.cost_training",
                      "predicted training-step time per stage: eager, torch.compile, the fused paths, the phase design"),
}


def _usage() -> str:
    lines = ["usage: python -m seda_fast <command> [options]", "", "commands:"]
    width = max(map(len, COMMANDS))
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines.append("\n`python -m seda_fast <command> --help` shows a command's options.")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return int(importlib.import_module(COMMANDS[name][0]).main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
