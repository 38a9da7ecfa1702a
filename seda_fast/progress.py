"""tqdm progress bars that suit both a terminal and a log file.

On a terminal a bar redraws as usual. When stderr is not a terminal (a log file, a pipe, CI), every
redraw would be appended to the log (tqdm writes each ``\\r`` update: about 1 MB for one quick demo
run), so the bar redraws at most once every :data:`LOG_INTERVAL_S` seconds there.
"""
from __future__ import annotations

import sys

LOG_INTERVAL_S = 60.0


def bar(iterable=None, *, enabled: bool = True, desc: str | None = None, total: int | None = None, **kwargs):
    """A ``tqdm`` bar over ``iterable`` (or a manual one with ``total``); ``enabled=False`` hides it."""
    from tqdm.auto import tqdm

    if not _stderr_is_tty():
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.setdefault("maxinterval", LOG_INTERVAL_S)
    return tqdm(iterable, desc=desc, total=total, disable=not enabled, **kwargs)


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False
