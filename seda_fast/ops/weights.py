"""Weight-side inputs of the fused inference ops, cached per model so a steady-state call makes only
its kernel launches: the ``[K, H]`` time-embedding tables (computed by the reference's own
:func:`seda_fast.reference.sampling_tables`, in fp32), the ``[K, 2]`` DDIM tables and the stacked
residual-layer weights (keyed on the identity, storage and ``_version`` of every tensor they are made
from), the autocast copies of the weights, and the flat weight list the custom ops take.

(An in-place change through ``param.data`` does not bump ``_version``, so these caches, the folded
inference weights among them, would keep the old values; use ``with torch.no_grad(): param.copy_(...)``
or an optimizer step, as PyTorch itself does. Cached copies are made outside inference mode, so a
call under ``torch.inference_mode()`` finds them again.)
"""
from __future__ import annotations

import types
import weakref

import torch
from torch.utils.weak import WeakTensorKeyDictionary

from .. import reference, schedule

# Keyed (weakly) on a denoiser's first time-MLP weight, so an entry dies with the model's weights;
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


def _weights_key(T: int, K: int, den):
    tensors = [den.time_in.weight, den.time_in.bias, den.time_out.weight, den.time_out.bias]
    for layer in den.hidden:
        tensors += [layer.weight, layer.bias]
    try:
        ident = tuple((id(t), t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
    except RuntimeError:  # inference tensors have no version counter: never cache them
        return None
    return (T, K, den.in_x.weight.shape) + ident


def prepared(den, T: int, K: int, device) -> dict:
    """Weight-only inputs of a sampler launch for the denoiser ``den``: ``e`` ``[K, H]`` and ``ddim``
    ``[K, 2]`` tables (fp32) and the stacked residual weights ``wh``/``bh``, cached until a source
    tensor changes."""
    key = _weights_key(T, K, den)
    anchor = den.time_in.weight
    hit = _CACHE.get(anchor)
    if key is not None and hit is not None and hit[0] == key:
        return hit[1]
    H, d = den.in_x.weight.shape
    with torch.no_grad(), torch.autocast(device.type, enabled=False):  # fp32 tables, always
        ddim, e = reference.sampling_tables(_fp32_time_mlp(den), T, K, d, torch.float32, device)
        wh, bh = hidden_stack(den, H, den.in_x.weight.dtype, device)
    out = {"e": e.contiguous(), "ddim": ddim.contiguous(), "wh": wh, "bh": bh}
    if key is not None:
        _CACHE[anchor] = (key, out)
    return out


_FOLDED = WeakTensorKeyDictionary()


def _folded(src, make, extra=()) -> dict:
    """``make(*float64 copies of src)`` rounded to ``src[0]``'s dtype, cached (weakly on ``src[0]``)
    until a source tensor changes (or is another tensor: the entry holds weak references to all) or
    ``extra`` (the scalars ``make`` uses) does."""
    try:
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in src) + tuple(extra)
    except RuntimeError:  # inference tensors have no version counter: never cache them
        key = None
    anchor = src[0]
    hit = _FOLDED.get(anchor)
    if key is not None and hit is not None and hit[0] == key and all(r() is t for r, t in zip(hit[1], src)):
        return hit[2]
    with torch.inference_mode(False), torch.no_grad(), torch.autocast(anchor.device.type, enabled=False):
        out = {k: v.to(anchor.dtype).contiguous() for k, v in make(*(t.detach().double() for t in src)).items()}
    if key is not None:
        _FOLDED[anchor] = (key, tuple(weakref.ref(t) for t in src), out)
    return out


def folded(den) -> dict:
    """The folded inference steps' weights of a denoiser (``kernels/infer_phases.py``, "Folded
    steps"): ``wxo = W_x W_o [H, H]`` and ``bxo = W_x b_o [H]``, computed in float64 from the given
    tensors, rounded once to their dtype, cached until one changes."""
    return _folded((den.in_x.weight, den.out.weight, den.out.bias),
                   lambda wx, wo, bo: {"wxo": wx @ wo, "bxo": wx @ bo})


def folded_pfin(translator, pfin) -> dict:
    """PFIN's folded weights, which read ``x0_hat = h W_o + b_o`` (the Translator's) through ``h``:
    ``wpo = W_pu W_o [H, H]``, ``bpo = b_p + W_pu b_o [H]``, ``wgo = W_gu W_o [d, H]``,
    ``bgo = b_g + W_gu b_o [d]``; computed and cached as :func:`folded`."""
    return _folded((pfin.p_u.weight, pfin.p_u.bias, pfin.g_u.weight, pfin.g_u.bias, translator.out.weight,
                    translator.out.bias),
                   lambda wpu, bp, wgu, bg, wo, bo: {"wpo": wpu @ wo, "bpo": bp + wpu @ bo, "wgo": wgu @ wo,
                                                     "bgo": bg + wgu @ bo})


def folded_start(den, c0: float, c1: float) -> dict:
    """The weights of a stage's first step in its condition phase (folded calls): with the start
    ``x = c0 c + c1 xi`` (``c`` the condition input: z for the Learner, s for the Translator) the
    step reads ``x W_x^T + c W_c^T`` as ``c (W_c + c0 W_x)^T + xi (c1 W_x)^T``: ``wcx [H, d]``,
    ``wxi [H, d]``; computed and cached as :func:`folded` (and per ``c0, c1``)."""
    return _folded((den.in_c.weight, den.in_x.weight),
                   lambda wc, wx: {"wcx": wc + c0 * wx, "wxi": c1 * wx}, extra=(float(c0), float(c1)))


def inference_tables(learner, translator, pfin, T: int, K1: int, K2: int, device, fold: bool,
                     semantic_only: bool = False) -> dict:
    """The fused inference launcher's ``tables``: :func:`prepared` per denoiser, with the folded
    weights (:func:`folded`, :func:`folded_pfin`, :func:`folded_start` at T's start coefficients)
    merged in when the call runs the folded steps (the Learner's alone for a ``semantic_only``
    call)."""
    tables = {"learner": prepared(learner, T, K1, device), "translator": prepared(translator, T, K2, device)}
    if fold:
        c0, c1 = schedule.start_coefficients(T)
        tables["learner"] = {**tables["learner"], **folded(learner), **folded_start(learner, c0, c1)}
        if not semantic_only:
            tables["translator"] = {**tables["translator"], **folded(translator), **folded_pfin(translator, pfin),
                                    **folded_start(translator, c0, c1)}
    return tables


# The custom ops take the weights as a flat tensor list in the fixed order of :func:`weight_paths`
# and rebuild a read-only view with the module layout.

_PROJ = ("linear.weight", "linear.bias", "norm.weight", "norm.bias")
_DEN = ("in_x.weight", "in_c.weight", "in_c.bias", "time_in.weight", "time_in.bias", "time_out.weight",
        "time_out.bias", "out.weight", "out.bias")
_PFIN = ("p_m.weight", "p_u.weight", "p_u.bias", "down.weight", "down.bias", "g_m.weight", "g_u.weight", "g_u.bias")


PARTS = {"semantic": ("visual_proj", "learner"), "translator": ("translator", "pfin", "head")}


_PATHS: dict = {}


@torch.compiler.assume_constant_result
def weight_paths(n_hidden: int, part: str) -> tuple[str, ...]:
    """Dotted parameter names one fused inference op reads, in its argument order: ``part`` is
    ``"semantic"`` (projector + Learner) or ``"translator"`` (Translator + PFIN + head). Cached in a
    dict, like ``seda_fast.schedule``'s tables (every fused inference call reads them), and a
    constant to torch.compile."""
    key = (n_hidden, part)
    if key not in _PATHS:
        _PATHS[key] = _weight_paths(n_hidden, part)
    return _PATHS[key]


def _weight_paths(n_hidden: int, part: str) -> tuple[str, ...]:
    paths = []
    for name in PARTS[part]:
        if name == "visual_proj":
            paths += [f"visual_proj.{p}" for p in _PROJ]
        elif name == "pfin":
            paths += [f"pfin.{p}" for p in _PFIN]
        elif name == "head":
            paths += ["head.weight", "head.bias"]
        else:
            paths += [f"{name}.{p}" for p in _DEN]
            paths += [f"{name}.hidden.{i}.{p}" for i in range(n_hidden) for p in ("weight", "bias")]
    return tuple(paths)


def _get(module, path: str):
    for part in path.split("."):
        module = getattr(module, part)
    return module


def model_view(weights, n_hidden: int, part: str):
    """A namespace with the attribute layout of :class:`seda_fast.SeDA` over one op's ``weights``."""
    root: dict = {}
    for path, tensor in zip(weight_paths(n_hidden, part), weights):
        node = root
        *parents, leaf = path.split(".")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = tensor

    def build(node):
        if all(k.isdigit() for k in node):  # ModuleList
            return [build(node[k]) for k in sorted(node, key=int)]
        return types.SimpleNamespace(**{k: build(v) if isinstance(v, dict) else v for k, v in node.items()})
    for den in ("learner", "translator"):
        if den in root:
            root[den].setdefault("hidden", {})
    return build(root)


_CASTS = WeakTensorKeyDictionary()


def _cast(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight`` in ``dtype`` (autocast): the copy is cached until the weight changes."""
    if weight.dtype == dtype:
        return weight
    key = (dtype, weight.data_ptr(), weight._version)
    hit = _CASTS.get(weight)
    if hit is not None and hit[0] == key:
        return hit[1]
    with torch.inference_mode(False), torch.no_grad():  # a normal tensor: its version keys the caches after it
        copy = weight.detach().to(dtype)
    _CASTS[weight] = (key, copy)
    return copy


def in_dtype(weights, inputs, dtype):
    """Weights (cached casts) and the ``inputs`` (None stays None) in the compute ``dtype`` (None:
    the weights' own)."""
    if dtype is None or dtype == weights[0].dtype:
        return weights, list(inputs)
    return [_cast(w, dtype) for w in weights], [None if t is None else t.to(dtype) for t in inputs]


def op_args(model, part: str):
    """``(weights, n_hidden)``: the flat weight list of one fused inference op (``part`` as in
    :func:`weight_paths`) and the number of residual layers."""
    n_hidden = model.config.layers - 1
    return [_get(model, p) for p in weight_paths(n_hidden, part)], n_hidden


def clear_caches() -> None:
    """Empty the weight caches above (their tables are rebuilt on next use): after a failed CUDA-graph
    capture, whose cache misses left tables that were never computed."""
    for cache in (_CACHE, _FOLDED, _CASTS):
        cache.clear()


def cached_tensors() -> list:
    """Every tensor the weight caches above hold now. A CUDA graph that read one at capture keeps
    the list, so a later cache update cannot free memory the graph reads."""
    out = []
    for _, (_, tables) in _CACHE.items():
        out += tables.values()
    for _, (_, _, tables) in _FOLDED.items():
        out += tables.values()
    for _, (_, copy) in _CASTS.items():
        out.append(copy)
    return out
