"""The one launch hook every launcher in this package goes through.

``launch(kernel, grid, *args, **meta)`` runs ``kernel[grid](*args, **meta)`` and counts it;
``count_launches()`` is a context manager that exposes the count of the launches made inside it
(tests use it to pin the number of kernel launches of one fused call); ``capture_launches()``
records launches WITHOUT running them (the compile report uses it to get the exact arguments and
meta-parameters a call would launch with; the launchers then return uninitialised outputs).
``launch_group()`` marks the launches made inside it as one group (a phase launcher's range,
which on CUDA replays as one graph, see ``_graphs.py``): a recorded launch carries its group.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

_state = threading.local()


class LaunchCounter:
    """Launches seen inside one :func:`count_launches` block: ``count`` and ``names`` (in order)."""

    def __init__(self):
        self.names: list[str] = []

    @property
    def count(self) -> int:
        return len(self.names)


def _counters() -> list:
    if not hasattr(_state, "counters"):
        _state.counters = []
    return _state.counters


@contextlib.contextmanager
def count_launches():
    """``with count_launches() as c: ...`` then ``c.count`` / ``c.names``."""
    counter = LaunchCounter()
    _counters().append(counter)
    try:
        yield counter
    finally:
        _counters().remove(counter)


@dataclass
class Launch:
    """One launch as the launcher made it: positional ``args`` and keyword ``meta`` (constexprs,
    ``num_warps``, ``num_stages``)."""
    kernel: object
    grid: tuple
    args: tuple
    meta: dict
    group: int | None = None  # the launch_group() it was made in (numbered per thread), or None


@contextlib.contextmanager
def launch_group():
    """The launches made inside the block form one group (recorded launches carry its number)."""
    prev = getattr(_state, "group", None)
    _state.group = _state.next_group = getattr(_state, "next_group", 0) + 1
    try:
        yield
    finally:
        _state.group = prev


def recording() -> bool:
    """Whether :func:`capture_launches` is recording (launches are not run)."""
    return getattr(_state, "capture", None) is not None


@contextlib.contextmanager
def capture_launches(keep_args: bool = True):
    """``with capture_launches() as launches: ...``: launches are recorded in the list, not run.
    ``keep_args=False`` records only kernel and grid, so the arguments (and the launchers'
    workspace) are freed as in a real run (memory sizing)."""
    launches: list[Launch] = []
    prev = getattr(_state, "capture", None)
    _state.capture = (launches, keep_args)
    try:
        yield launches
    finally:
        _state.capture = prev


def kernel_name(kernel) -> str:
    return getattr(kernel, "__name__", None) or getattr(getattr(kernel, "fn", None), "__name__", "kernel")


def launch(kernel, grid, *args, **meta):
    """Launch a ``@triton.jit`` kernel on ``grid`` and record it in every active counter."""
    for counter in _counters():
        counter.names.append(kernel_name(kernel))
    capture = getattr(_state, "capture", None)
    if capture is not None:
        launches, keep_args = capture
        launches.append(Launch(kernel, tuple(grid), args if keep_args else (), dict(meta) if keep_args else {},
                               getattr(_state, "group", None)))
        return None
    return kernel[grid](*args, **meta)
