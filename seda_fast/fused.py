"""The ``"triton"`` backend: glue between :class:`seda_fast.SeDA` and the launchers in
:mod:`seda_fast.kernels`. Same call signatures as the matching :mod:`seda_fast.reference`
functions, so the module layer can dispatch to either.

Kernel import: the launchers live in the top-level ``kernels/`` directory, which setup.py installs
as ``seda_fast.kernels``. From a source checkout (tests run from the repo root without install)
that name does not exist, so :func:`kernels` loads ``<repo>/kernels/__init__.py`` under the same
name ``seda_fast.kernels`` with importlib; installed (normal or editable), the regular import wins.
The import is lazy (first fused call), so importing seda_fast never needs triton, and
``TRITON_INTERPRET`` is read when the kernels are first decorated.

Per-call host work is cached: the ``[K, H]`` time-embedding tables (computed by the reference's own
:func:`seda_fast.reference.sampling_tables`, in fp32), the ``[K, 2]`` DDIM tables and the stacked
residual-layer weights depend only on weights, so they are kept per model, keyed on the identity,
storage and ``_version`` of every tensor they are made from; a steady-state call makes exactly the
kernel launches of the launchers (2 for :func:`infer`, 1 for :func:`semantic`) and no other work
on the device. (An in-place change through ``param.data`` does not bump ``_version``; use
``with torch.no_grad(): param.copy_(...)`` or an optimizer step, as PyTorch itself does.)
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path

import torch
from torch.utils.weak import WeakTensorKeyDictionary

from . import reference, schedule


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
    root = Path(__file__).resolve().parent.parent / "kernels"
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


# --------------------------------------------------------------------------- cached weight-only tables

# Keyed (weakly) on the Learner's first time-MLP weight, so an entry dies with the model's weights;
# the stored key (identity, storage, _version of every source tensor) validates a hit.
_CACHE = WeakTensorKeyDictionary()


def _fp32_time_mlp(den):
    """The time MLP's weights as fp32 (the module itself when already fp32, so the table is the
    reference's table bit for bit)."""
    if den.time_in.weight.dtype == torch.float32:
        return den

    def lin(m):
        return types.SimpleNamespace(weight=m.weight.float(), bias=m.bias.float())
    return types.SimpleNamespace(time_in=lin(den.time_in), time_out=lin(den.time_out))


def hidden_stack(den, H, dtype, device):
    """``([L-1, H, H], [L-1, H])`` residual-layer weights (a view when L-1 <= 1, else a copy;
    differentiable, so the training ops use it too)."""
    layers = list(den.hidden)
    if not layers:
        return torch.empty(0, H, H, dtype=dtype, device=device), torch.empty(0, H, dtype=dtype, device=device)
    if len(layers) == 1:
        return layers[0].weight.unsqueeze(0), layers[0].bias.unsqueeze(0)
    return (torch.stack([l.weight for l in layers]).contiguous(),
            torch.stack([l.bias for l in layers]).contiguous())


def _weights_key(config, dens):
    tensors = []
    for den in dens:
        tensors += [den.time_in.weight, den.time_in.bias, den.time_out.weight, den.time_out.bias]
        for layer in den.hidden:
            tensors += [layer.weight, layer.bias]
    try:
        ident = tuple((id(t), t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
    except RuntimeError:  # inference tensors have no version counter: never cache them
        return None
    return (config.diffusion_steps, config.learner_steps, config.translator_steps, config.dim, config.hidden) + ident


def prepared(model, translator: bool = True) -> dict:
    """Weight-only inputs of the launchers (``e``/``ddim`` tables per stage, stacked residual
    weights) for the Learner (and the Translator), cached until a source tensor changes."""
    cfg = model.config
    stages = [("learner", model.learner, cfg.learner_steps)]
    if translator:
        stages.append(("translator", model.translator, cfg.translator_steps))
    key = _weights_key(cfg, [den for _, den, _ in stages])
    anchor = model.learner.time_in.weight
    slot = _CACHE.get(anchor)
    if key is not None and slot is not None and slot.get(translator, (None,))[0] == key:
        return slot[translator][1]
    out = {}
    with torch.no_grad(), torch.autocast(model.device.type, enabled=False):  # fp32 tables, always
        for name, den, K in stages:
            dtype = den.in_x.weight.dtype
            ddim, e = reference.sampling_tables(_fp32_time_mlp(den), cfg.diffusion_steps, K, cfg.dim,
                                                torch.float32, model.device)
            wh, bh = hidden_stack(den, cfg.hidden, dtype, model.device)
            out[name] = {"e": e.contiguous(), "ddim": ddim.contiguous(), "wh": wh, "bh": bh}
    if key is not None:
        if slot is None:
            slot = _CACHE[anchor] = {}
        slot[translator] = (key, out)
    return out


# --------------------------------------------------------------------------- the backend
#
# The launchers run inside two torch.library custom ops, so torch.compile traces a triton-backend
# model as one opaque op per call (no graph break); the ops take the weights as a flat tensor list
# in the fixed order of :func:`weight_paths` and rebuild a read-only view with the module layout.

_PROJ = ("linear.weight", "linear.bias", "norm.weight", "norm.bias")
_DEN = ("in_x.weight", "in_c.weight", "in_c.bias", "time_in.weight", "time_in.bias", "time_out.weight",
        "time_out.bias", "out.weight", "out.bias")
_PFIN = ("p_m.weight", "p_u.weight", "p_u.bias", "down.weight", "down.bias", "g_m.weight", "g_u.weight", "g_u.bias")


def weight_paths(n_hidden: int, with_translator: bool = True) -> list[str]:
    """Dotted parameter names the fused chain reads, in the custom ops' argument order."""
    dens = ("learner", "translator") if with_translator else ("learner",)
    paths = [f"visual_proj.{p}" for p in _PROJ]
    for den in dens:
        paths += [f"{den}.{p}" for p in _DEN]
        paths += [f"{den}.hidden.{i}.{p}" for i in range(n_hidden) for p in ("weight", "bias")]
    if with_translator:
        paths += [f"pfin.{p}" for p in _PFIN] + ["head.weight", "head.bias"]
    return paths


def _get(module, path: str):
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _view(weights, n_hidden: int, with_translator: bool, T: int, K1: int, K2: int, ln_eps: float):
    """A namespace with the attribute layout of :class:`seda_fast.SeDA` over ``weights``."""
    root: dict = {}
    for path, tensor in zip(weight_paths(n_hidden, with_translator), weights):
        node = root
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = tensor

    def build(node):
        if all(k.isdigit() for k in node):  # ModuleList
            return [build(node[k]) for k in sorted(node, key=int)]
        return types.SimpleNamespace(**{k: build(v) if isinstance(v, dict) else v for k, v in node.items()})
    for den in ("learner", "translator"):
        if den in root:
            root[den].setdefault("hidden", {})
    view = build(root)
    view.visual_proj.norm.eps = ln_eps
    d, H = view.learner.out.weight.shape
    view.config = types.SimpleNamespace(diffusion_steps=T, learner_steps=K1, translator_steps=K2, dim=d, hidden=H)
    view.device = weights[0].device
    return view


def _check_dtype(model) -> torch.dtype:
    dtype = model.visual_proj.linear.weight.dtype
    if dtype not in FUSED_DTYPES:
        raise TypeError(f"the fused Triton kernels support float32/float16/bfloat16 parameters, got {dtype}; "
                        "use backend='eager' or cast the model")
    return dtype


def _semantic(model, visual, tables):
    k, vp, den = kernels(), model.visual_proj, model.learner
    c0, _ = schedule.start_coefficients(model.config.diffusion_steps)
    return k.semantic_sample(visual.contiguous(), vp.linear.weight, vp.linear.bias, vp.norm.weight, vp.norm.bias,
                             vp.norm.eps, den.in_x.weight, den.in_c.weight, den.in_c.bias, tables["wh"],
                             tables["bh"], den.out.weight, den.out.bias, tables["e"], tables["ddim"], c0)


_CASTS = WeakTensorKeyDictionary()


def _cast(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight`` in ``dtype`` (autocast): the copy is cached until the weight changes."""
    if weight.dtype == dtype:
        return weight
    key = (dtype, weight.data_ptr(), weight._version)
    hit = _CASTS.get(weight)
    if hit is not None and hit[0] == key:
        return hit[1]
    copy = weight.detach().to(dtype)
    _CASTS[weight] = (key, copy)
    return copy


def _in_dtype(weights, visual, dtype):
    """Weights (cached casts) and input in the compute ``dtype`` (None: the weights' own)."""
    if dtype is None or dtype == weights[0].dtype:
        return weights, visual
    return [_cast(w, dtype) for w in weights], visual.to(dtype)


def autocast_dtype(device: torch.device, default: torch.dtype | None = None) -> torch.dtype | None:
    """The autocast dtype when autocast is on for ``device``'s type, else ``default``."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return default


def compute_dtype(model, visual: torch.Tensor) -> torch.dtype:
    """The autocast dtype when autocast is on for ``visual``'s device, else the parameters' dtype
    (the eager backend's linears follow autocast the same way)."""
    return autocast_dtype(visual.device) or _check_dtype(model)


def infer_impl(visual, noise, weights, n_hidden: int, T: int, K1: int, K2: int, ln_eps: float,
               dtype: torch.dtype | None = None):
    """Body of the ``seda_fast::fused_infer`` op: the two launches on a flat weight list, in
    ``dtype`` (default: the weights' dtype)."""
    weights, visual = _in_dtype(weights, visual, dtype)
    model = _view(weights, n_hidden, True, T, K1, K2, ln_eps)
    dtype = _check_dtype(model)
    tables = prepared(model)
    z, s = _semantic(model, visual, tables["learner"])
    if noise is not None and noise.dtype != dtype:
        noise = noise.to(dtype)
    den, pf, t = model.translator, model.pfin, tables["translator"]
    c0, c1 = schedule.start_coefficients(T)
    logits, m = kernels().translator_pfin(
        s, z, None if noise is None else noise.contiguous(),
        den.in_x.weight, den.in_c.weight, den.in_c.bias, t["wh"], t["bh"], den.out.weight, den.out.bias,
        pf.p_m.weight, pf.p_u.weight, pf.p_u.bias, pf.down.weight, pf.down.bias,
        pf.g_m.weight, pf.g_u.weight, pf.g_u.bias, model.head.weight, model.head.bias,
        t["e"], t["ddim"], c0, c1)
    return logits, s, m


@torch.library.custom_op("seda_fast::fused_infer", mutates_args=())
def _infer_op(visual: torch.Tensor, noise: torch.Tensor | None, weights: list[torch.Tensor], n_hidden: int,
              T: int, K1: int, K2: int, ln_eps: float,
              dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return infer_impl(visual, noise, weights, n_hidden, T, K1, K2, ln_eps, dtype)


@_infer_op.register_fake
def _(visual, noise, weights, n_hidden, T, K1, K2, ln_eps, dtype):
    B, d, C = visual.shape[0], weights[0].shape[0], weights[-1].shape[0]
    return visual.new_empty(B, C, dtype=dtype), visual.new_empty(B, d, dtype=dtype), visual.new_empty(B, d, dtype=dtype)


@torch.library.custom_op("seda_fast::fused_semantic", mutates_args=())
def _semantic_op(visual: torch.Tensor, weights: list[torch.Tensor], n_hidden: int, T: int, K1: int,
                 ln_eps: float, dtype: torch.dtype) -> torch.Tensor:
    weights, visual = _in_dtype(weights, visual, dtype)
    model = _view(weights, n_hidden, False, T, K1, 1, ln_eps)
    _check_dtype(model)
    return _semantic(model, visual, prepared(model, translator=False)["learner"])[1]


@_semantic_op.register_fake
def _(visual, weights, n_hidden, T, K1, ln_eps, dtype):
    return visual.new_empty(visual.shape[0], weights[0].shape[0], dtype=dtype)


def op_args(model, with_translator: bool = True):
    """``(weights, n_hidden, T, ln_eps)``: the model-derived arguments of the custom ops."""
    cfg = model.config
    n_hidden = cfg.layers - 1
    weights = [_get(model, p) for p in weight_paths(n_hidden, with_translator)]
    return weights, n_hidden, cfg.diffusion_steps, float(model.visual_proj.norm.eps)


def infer(model, visual: torch.Tensor, noise: torch.Tensor | None = None):
    """Fused inference chain: ``visual [B, Dv] -> (logits [B, C], s [B, d], m [B, d])``.

    Two launches: projector + Learner loop (:func:`seda_fast.kernels.semantic_sample`), then
    Translator + PFIN loop + head (:func:`seda_fast.kernels.translator_pfin`), inside the custom op
    ``seda_fast::fused_infer``. ``noise`` is the Translator's start noise ``[B, d]`` (``None`` =
    zeros), used as ``noise.to(dtype)`` like the reference. Under ``torch.autocast`` the chain runs
    in the autocast dtype (weights cast once and cached); outputs are in the compute dtype and
    carry no autograd history.
    """
    dtype = compute_dtype(model, visual)
    weights, n_hidden, T, eps = op_args(model, True)
    cfg = model.config
    return torch.ops.seda_fast.fused_infer(visual, noise, weights, n_hidden, T, cfg.learner_steps,
                                           cfg.translator_steps, eps, dtype)


def semantic(model, visual: torch.Tensor) -> torch.Tensor:
    """Fused projector + DCSL sampler: ``visual [B, Dv] -> s [B, d]`` (one launch,
    custom op ``seda_fast::fused_semantic``)."""
    dtype = compute_dtype(model, visual)
    weights, n_hidden, T, eps = op_args(model, False)
    return torch.ops.seda_fast.fused_semantic(visual, weights, n_hidden, T, model.config.learner_steps, eps, dtype)
