"""What every fused op needs before it launches: whether the kernels can run here (CUDA, or CPU
under Triton's interpreter with the mode fixed since import), the kernel package itself, and the
compute dtype.

Kernel import: the launchers live in the top-level ``kernels/`` directory, which setup.py installs
as ``seda_fast.kernels``. From a source checkout (tests run from the repo root without install)
that name does not exist, so :func:`kernels` loads ``<repo>/kernels/__init__.py`` under the same
name ``seda_fast.kernels`` with importlib; installed (normal or editable), the regular import wins.
The import is lazy (first fused call), so importing seda_fast never needs triton, and
``TRITON_INTERPRET`` is read when the kernels are first decorated.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch


def interpreter_enabled() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1`` at import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - platform without triton
        return False
    return True


def _interpreted(fn) -> bool:
    from triton.runtime.interpreter import InterpretedFunction
    return isinstance(fn, InterpretedFunction)


@torch.compiler.assume_constant_result  # torch.compile runs it instead of tracing it (it reads a module global)
def interpreter_mode_mismatch() -> str | None:
    """None when every ``@triton.jit`` function in use was decorated in the mode that
    ``TRITON_INTERPRET`` selects now; otherwise what to do about it.

    Triton fixes the interpreter mode when a function is decorated: its own library (``tl.sigmoid``
    and the reductions' combine functions) when triton is imported, which importing torch's custom-op
    machinery (and so seda_fast) already does, and seda_fast's kernels at their first use. Setting or
    clearing the variable later in the same process mixes the modes, and a launch then fails deep in
    Triton with an ``InterpreterError``."""
    import triton.language.standard as tl_std

    now = interpreter_enabled()
    decorated = {"triton's own @triton.jit library (decorated when triton was imported)": _interpreted(tl_std.sigmoid)}
    if _KERNELS is not None:
        decorated["seda_fast's kernels (decorated at their first use)"] = _interpreted(_KERNELS.class_sums_kernel)
    for what, interpreted in decorated.items():
        if interpreted == now:
            continue
        if now:
            return (f"TRITON_INTERPRET=1 is set now, but {what} was decorated without it: Triton fixes the "
                    "interpreter mode when a function is decorated, so setting the variable inside a running "
                    "process comes too late. Set it before Python starts (`TRITON_INTERPRET=1 python ...`) or at "
                    "the top of the script before importing torch, triton or seda_fast; or use backend='eager'")
        return (f"TRITON_INTERPRET is {os.environ.get('TRITON_INTERPRET', 'unset')!r} now, but {what} was "
                "decorated with TRITON_INTERPRET=1: Triton fixes the interpreter mode when a function is decorated. "
                "Keep TRITON_INTERPRET=1 for this process (on CPU the fused kernels need it), or start a new "
                "process without it")
    return None


def available(device: torch.device) -> bool:
    """Whether fused kernels can run on ``device``: CUDA, or CPU under the Triton interpreter (and
    the interpreter mode has not changed since triton was imported)."""
    if not triton_importable():
        return False
    ok = device.type == "cuda" or (device.type == "cpu" and interpreter_enabled())
    return ok and interpreter_mode_mismatch() is None


def require(device: torch.device) -> None:
    """Raise a clear error when the fused kernels cannot run on ``device``."""
    if not triton_importable():
        raise RuntimeError("backend='triton' needs the triton package (Linux); use backend='eager'")
    mismatch = interpreter_mode_mismatch()
    if mismatch:
        raise RuntimeError(mismatch)
    if device.type == "cpu" and not interpreter_enabled():
        raise RuntimeError(
            "backend='triton' on CPU tensors runs only under Triton's interpreter: set "
            "TRITON_INTERPRET=1 before importing seda_fast, move the model to CUDA, or use backend='eager'")
    if device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"backend='triton' supports CUDA (and CPU under TRITON_INTERPRET=1), not {device.type}")


FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_KERNELS = None


def kernels():
    """The ``seda_fast.kernels`` package: installed, or ``<repo>/kernels`` in a source checkout."""
    global _KERNELS
    if _KERNELS is not None:
        return _KERNELS
    if importlib.util.find_spec("seda_fast.kernels") is not None:
        _KERNELS = importlib.import_module("seda_fast.kernels")
        return _KERNELS
    root = Path(__file__).resolve().parents[2] / "kernels"
    init = root / "__init__.py"
    if not init.is_file():
        raise ImportError(f"seda_fast.kernels is not installed and {init} does not exist")
    spec = importlib.util.spec_from_file_location("seda_fast.kernels", init, submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["seda_fast.kernels"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["seda_fast.kernels"]
        raise
    setattr(sys.modules["seda_fast"], "kernels", module)
    _KERNELS = module
    return module


def flat_split_plan(layout, order) -> tuple:
    """How to cut a flat buffer laid out as ``layout`` (``[(name, shape)]``, consecutive) into the
    parts named by ``order``: ``(sizes, ((part index, shape), ...))``, plain values (a fused
    op's backward computes it under :func:`torch.compiler.assume_constant_result`)."""
    index = {name: (i, tuple(shape)) for i, (name, shape) in enumerate(layout)}
    return tuple(math.prod(shape) for _, shape in layout), tuple(index[name] for name in order)


def split_flat(flat: torch.Tensor, plan: tuple) -> tuple:
    """The views of ``flat`` that :func:`flat_split_plan`'s ``plan`` names: one split, then a
    reshaping view per part that is not 1-D (each view is a host dispatch; autograd takes views of
    one buffer as gradients; a custom op may not return them)."""
    sizes, picks = plan
    parts = torch.split(flat, sizes)
    return tuple(parts[i] if len(shape) == 1 else parts[i].view(shape) for i, shape in picks)


def check_dtype(dtype: torch.dtype) -> torch.dtype:
    """``dtype`` when the kernels take it (float32, float16, bfloat16), else a clear error."""
    if dtype not in FUSED_DTYPES:
        raise TypeError(f"the fused Triton kernels support float32/float16/bfloat16 parameters, got {dtype}; "
                        "use backend='eager' or cast the model")
    return dtype


def autocast_dtype(device: torch.device, default: torch.dtype | None = None) -> torch.dtype | None:
    """The autocast dtype when autocast is on for ``device``'s type, else ``default`` (also for a
    device type autocast does not know, such as meta)."""
    if torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return default


def compute_dtype(model, visual: torch.Tensor) -> torch.dtype:
    """The autocast dtype when autocast is on for ``visual``'s device, else the parameters' dtype
    (the eager backend's linears follow autocast the same way). Parameters the kernels do not take
    (fp64) are refused under autocast too: autocast does not lower fp64 in the eager backend either."""
    dtype = check_dtype(model.visual_proj.linear.weight.dtype)
    return autocast_dtype(visual.device) or dtype


def in_compute_dtype(tensors, device: torch.device) -> list:
    """``tensors`` cast (differentiably) to the autocast dtype when autocast is on for ``device``,
    else to the first one's dtype (the weights'): the kernels take one dtype, and under AMP the
    gradients flow back to the fp32 master weights as fp32."""
    dtype = autocast_dtype(device, tensors[0].dtype)
    return [t.to(dtype) for t in tensors]


_LAUNCH = {"graph": True, "pdl": None, "split_k": False, "fold": None, "tile_plan": True,
           "tma": False}  # see launch_options


@contextlib.contextmanager
def launch_options(graph: bool = True, pdl: bool | None = None, split_k: bool = False, fold: bool | None = None,
                   tile_plan: bool = True, tma: bool = False):
    """Inside the block the phase ops launch on CUDA as asked: ``graph=False`` makes one Python
    launch per phase instead of a CUDA-graph replay (inference: the cached graph of the whole call;
    training: the graph of each phase range once its launches recur, ``kernels/_graphs.py``);
    ``pdl`` ``True``/``False`` forces programmatic dependent launch on or off (``None``: on where the
    device has it); ``split_k=True`` runs fp16/bf16 inference up to B = 256 on split-K tiles
    (``kernels.infer_phases.pick_infer_tiles``; on any device), which changes the numbers only by
    the fp32 summation order; ``fold`` ``True``/``False`` forces inference's folded steps on or off
    (``None``: ``kernels.infer_phases.use_fold``, by batch), which changes the numbers only by
    rounding; ``tile_plan=False`` runs every phase of an inference call on the call's one tile
    (``kernels.infer_phases.pick_infer_tiles``) instead of each phase on its own
    (``pick_phase_plan``, which differs from it at fp16/bf16 batches above 256), which changes the
    numbers only by the fp32 summation order; ``tma=True`` loads inference's GEMM operands through
    tensor descriptors (TMA on Hopper; ``kernels.infer_phases``, "Tensor descriptors"; ``"phases"``
    and 16-byte-aligned widths only), which changes the numbers only by the fp32 summation order. ``benchmarks/gpu_check.py`` times each way."""
    asked = dict(graph=graph, pdl=pdl, split_k=split_k, fold=fold, tile_plan=tile_plan, tma=tma)
    for name, value in asked.items():  # a truthy string ("False") would silently turn an option on
        if isinstance(value, (bool, np.bool_)):
            asked[name] = bool(value)
        elif not (value is None and name in ("pdl", "fold")):
            allowed = "True, False or None" if name in ("pdl", "fold") else "True or False"
            raise TypeError(f"launch_options: {name} must be {allowed}, got {value!r}")
    saved = dict(_LAUNCH)
    _LAUNCH.update(asked)
    try:
        yield
    finally:
        _LAUNCH.update(saved)


def phase_launch(t: torch.Tensor) -> dict:
    """``pdl`` and ``graph`` for a training phase launcher working on ``t``'s device: programmatic
    dependent launch where the GPU has it, and CUDA-graph replay of recurring launches (the
    launcher uses it where a graph can be captured, on CUDA); :func:`launch_options` may turn
    either off. Neither inside a caller's own CUDA-graph capture (the caller's graph holds the
    launches; a capture of programmatic launches there is not measured on a GPU yet)."""
    from ..validation import stream_capturing
    if stream_capturing(t):
        return dict(pdl=False, graph=False)
    pdl = _LAUNCH["pdl"] is not False and kernels().infer_phases_module.pdl_available(t.device)
    return dict(pdl=pdl, graph=_LAUNCH["graph"])


def phase_graphs(clear: bool = False) -> dict:
    """What the training phase launchers' CUDA-graph cache has done in this process
    (``kernels/_graphs.py``): ``plain`` launch ranges, ``captures``, ``replays``, the ``graphs``
    held and a capture ``failure`` (None, or why; no capture is tried after one). Few replays
    after several steps mean the buffers' addresses did not recur. ``clear``: then drop the cache."""
    cache = kernels().graphs_module.GRAPHS
    out = dict(plain=cache.plain, captures=cache.captures, replays=cache.replays, graphs=len(cache.graphs),
               failure=cache.failure)
    if clear:
        cache.clear()
    return out
