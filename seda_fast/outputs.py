"""Where the commands write their results.

A run writes to a folder of the user's own: ``--out DIR``, by default :data:`DEFAULT_OUT_DIR`
(``./seda_fast_out``, relative to the working directory; the repository's ``.gitignore`` lists it).
The reference results committed under ``benchmarks/results/`` (the figures README quotes) are
rewritten only on purpose, with ``--update-reference``, from a source checkout.
"""
from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_OUT_DIR = Path("seda_fast_out")
REFERENCE_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def add_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--out DIR`` and ``--update-reference`` (mutually exclusive) for a command writing ``what``."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--out", metavar="DIR", default=None,
                       help=f"folder for {what} (default ./{DEFAULT_OUT_DIR}/)")
    group.add_argument("--update-reference", action="store_true",
                       help=f"write {what} to the committed reference results in benchmarks/results/ of this "
                            "source checkout (on purpose only: README quotes them)")


def out_dir(args: argparse.Namespace) -> Path:
    """The folder chosen by :func:`add_arguments`' options (not created here)."""
    if args.update_reference:
        if not REFERENCE_DIR.is_dir():
            raise FileNotFoundError(f"--update-reference needs a source checkout: {REFERENCE_DIR} does not exist")
        return REFERENCE_DIR
    return Path(args.out) if args.out else DEFAULT_OUT_DIR
