"""CUDA graphs of a phase launcher's launches: captured once, replayed when the same launches recur.

A phase launcher's launches are fixed by what it passes: the address and dtype of every tensor, the
sizes, the tiles and the schedule rows. :meth:`LaunchGraphs.run` takes a key that holds all of
them and a function that makes the launches:

* the first time a key is seen the launches are made plainly;
* the second time they are captured into a CUDA graph (they have run once, so every kernel is
  compiled; a capture runs nothing) and the graph is replayed;
* later calls with that key replay the graph: one graph launch instead of one Python launch per
  phase, the same kernels with the same arguments, so the numbers are bitwise a plain call's.

A training loop whose allocator hands back the same buffers each step (the steady state of
PyTorch's caching allocator) reaches the third case after two steps. Where keys do not recur, the
cost is one key per call; a cache that captures without replaying, or whose capture failed,
stops capturing (:attr:`LaunchGraphs.stalled`) and launches plainly. Not for use inside a
caller's own capture (the launchers launch plainly there). :func:`capture` is also what the
inference schedule's graph uses.
"""
from __future__ import annotations

import threading
import warnings
from collections import OrderedDict

_PDL = {"capture_failed": False}  # set when this process could not capture programmatic launches


def pdl_capture_failed() -> bool:
    """Whether a capture of programmatic dependent launches failed in this process (later captures
    go straight to plain launches)."""
    return _PDL["capture_failed"]


def capture(launch_all, device, pdl: bool, who: str = "a phase launcher"):
    """``(graph, pdl)``: a ``torch.cuda.CUDAGraph`` of ``launch_all(pdl)`` captured on a side stream
    (nothing runs), and the ``pdl`` it was captured with: where capturing programmatic launches
    fails (a driver or runtime that cannot), a warning, and the capture again without them."""
    import torch

    pdl = pdl and not _PDL["capture_failed"]
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    graph = torch.cuda.CUDAGraph()
    try:
        # capture_begin/end, not torch.cuda.graph(): that one also empties the allocator's cache,
        # which would move the next calls' buffers and so change their keys. "thread_local": a
        # training loop's other threads (a data loader pinning memory, a DDP reducer) may allocate
        # while this thread captures; only this thread's unsafe calls would break the capture
        with torch.cuda.stream(side):
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                launch_all(pdl)
            finally:
                graph.capture_end()
    except RuntimeError as exc:
        if not pdl:
            raise
        _PDL["capture_failed"] = True
        warnings.warn(f"{who}: capturing launches with programmatic dependent launch failed ({exc}); "
                      "capturing without it", RuntimeWarning, stacklevel=3)
        return capture(launch_all, device, False, who)
    torch.cuda.current_stream(device).wait_stream(side)
    return graph, pdl


class LaunchGraphs:
    """A bounded cache of launch-sequence graphs (see the module doc). ``max_graphs`` graphs and
    ``max_seen`` first sightings are kept, least recently used dropped first. ``capture_fn`` is
    :func:`capture` (tests substitute one that records instead)."""

    STALL_AFTER = 16  # captures after which a cache that replays fewer graphs than it captured stops capturing

    def __init__(self, max_graphs: int = 32, max_seen: int = 64, capture_fn=capture):
        self.graphs: OrderedDict = OrderedDict()
        self.seen: OrderedDict = OrderedDict()
        self.max_graphs, self.max_seen, self.capture_fn = max_graphs, max_seen, capture_fn
        self.captures = self.replays = self.plain = 0
        self.failure: str | None = None  # why a capture failed; no capture is tried after one
        self._lock = threading.RLock()  # a backward runs in autograd's device thread, its forward in the caller's

    @property
    def stalled(self) -> bool:
        """True once ``STALL_AFTER`` captures have bought fewer replays than captures (keys do not
        recur: an allocator that moves the buffers every call, so capturing only costs), or once a
        capture failed (:attr:`failure`); no capture is tried then."""
        return self.failure is not None or (self.captures >= self.STALL_AFTER and self.replays < self.captures)

    def run(self, key, launch_all, device, pdl: bool = False) -> str:
        """Make the launches ``launch_all(pdl)`` makes, as the key's history says; returns what was
        done: ``"plain"``, ``"captured"`` (then replayed) or ``"replayed"``."""
        with self._lock:
            return self._run(key, launch_all, device, pdl)

    def _run(self, key, launch_all, device, pdl):
        graph = self.graphs.get(key)
        if graph is not None:
            self.graphs.move_to_end(key)
            self.replays += 1
            graph.replay()
            return "replayed"
        if key in self.seen and not self.stalled:  # the second sighting: capture, then replay
            del self.seen[key]
            try:
                graph, _ = self.capture_fn(launch_all, device, pdl)
            except RuntimeError as exc:  # a step must not fail for want of a graph: launch plainly from now on
                self.failure = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"CUDA-graph capture of a phase launcher's launches failed ({exc}); launching "
                              "them one by one from now on", RuntimeWarning, stacklevel=4)
            else:
                self.graphs[key] = graph
                while len(self.graphs) > self.max_graphs:
                    self.graphs.popitem(last=False)
                self.captures += 1
                graph.replay()
                return "captured"
        self.seen[key] = None
        self.seen.move_to_end(key)
        while len(self.seen) > self.max_seen:
            self.seen.popitem(last=False)
        self.plain += 1
        launch_all(pdl)
        return "plain"

    def clear(self) -> None:
        """Drop every graph and sighting (the counts too)."""
        with self._lock:
            self.graphs.clear()
            self.seen.clear()
            self.captures = self.replays = self.plain = 0
            self.failure = None


GRAPHS = LaunchGraphs()  # the training phase launchers' graphs (unroll and diffusion term, forward and backward)


def usable(device) -> bool:
    """Whether :data:`GRAPHS` captures on ``device``: on CUDA, or anywhere when its capture is a
    stand-in (the CPU tests')."""
    return device.type == "cuda" or GRAPHS.capture_fn is not capture
