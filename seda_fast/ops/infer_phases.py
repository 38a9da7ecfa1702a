"""Custom op ``seda_fast::infer_phases`` around :func:`seda_fast.kernels.infer_phases`: the whole
inference chain as a fixed schedule of phases (one GEMM over all rows per phase),
``visual [B, Dv] -> (logits [B, C], s [B, d], m [B, d])``.

``impl``: ``"phases"`` (one launch per phase, programmatic dependent launch on Hopper; on CUDA the
whole call is one cached CUDA-graph replay, see :func:`launch_options`) or ``"persistent"`` (one cooperative launch with a grid barrier between phases; CUDA only).
``seda_fast::semantic_phases`` runs the schedule's prefix that ends with the Learner's sample:
``visual -> (z, s)``. The ops take the weights as one flat list (parts ``"semantic"`` then ``"translator"`` of
:func:`seda_fast.ops.weights.weight_paths`), so ``torch.compile`` traces a call as one opaque op.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import schedule
from ..validation import stream_capturing
from .runtime import _LAUNCH, check_dtype, compute_dtype, kernels, launch_options  # noqa: F401 (re-exported)
from .weights import in_dtype, inference_tables, model_view, op_args, weight_paths

def _call(visual: Tensor, noise: Tensor | None, weights: list[Tensor], n_hidden: int, T: int, K1: int, K2: int,
          ln_eps: float, dtype: torch.dtype, impl: str, semantic_only: bool = False):
    """The launcher on the flat weight list (cast to ``dtype`` once and cached)."""
    weights, (visual, noise) = in_dtype(weights, [visual, noise], dtype)
    check_dtype(weights[0].dtype)
    sem_paths = weight_paths(n_hidden, "semantic")
    paths = sem_paths + weight_paths(n_hidden, "translator")
    n_sem = len(sem_paths)
    learner = model_view(weights[:n_sem], n_hidden, "semantic").learner
    tr_view = model_view(weights[n_sem:], n_hidden, "translator")
    fold = _LAUNCH["fold"]
    if fold is None:
        fold = kernels().infer_phases_module.use_fold(visual.shape[0])
    tables = inference_tables(learner, tr_view.translator, tr_view.pfin, T, K1, K2, visual.device, fold,
                              semantic_only)
    c0, c1 = schedule.start_coefficients(T)
    # inside a caller's own CUDA-graph capture the call must not capture a graph of its own, and
    # launches plainly (a capture of programmatic launches inside a caller's graph is unmeasured)
    capturing = stream_capturing(visual)
    graph = impl == "phases" and visual.device.type == "cuda" and _LAUNCH["graph"] and not capturing
    pdl = (False if capturing else _LAUNCH["pdl"]) if impl == "phases" else None
    ip = kernels().infer_phases_module
    tiles = None if _LAUNCH["tile_plan"] else ip.pick_infer_tiles(  # one tile for every phase
        visual.shape[0], weights[0].shape[0], learner.in_x.weight.shape[0], visual.dtype, impl, _LAUNCH["split_k"])
    return kernels().infer_phases(visual.contiguous(), dict(zip(paths, weights)), tables, ln_eps=ln_eps,
                                  start_c0=c0, start_c1=c1, noise=noise, impl=impl, graph=graph, pdl=pdl,
                                  semantic_only=semantic_only, split_k=_LAUNCH["split_k"], fold=fold, tiles=tiles,
                                  tma=_LAUNCH["tma"])


def infer_phases_impl(visual: Tensor, noise: Tensor | None, weights: list[Tensor], n_hidden: int, T: int, K1: int,
                      K2: int, ln_eps: float, dtype: torch.dtype, impl: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(logits, s, m)`` in ``dtype`` from the flat weight list (cast to ``dtype`` once and cached)."""
    return _call(visual, noise, weights, n_hidden, T, K1, K2, ln_eps, dtype, impl)


def semantic_phases_impl(visual: Tensor, weights: list[Tensor], n_hidden: int, T: int, K1: int, K2: int,
                         ln_eps: float, dtype: torch.dtype, impl: str) -> tuple[Tensor, Tensor]:
    """``(z, s)`` in ``dtype``: the schedule's prefix up to the Learner's sample."""
    return _call(visual, None, weights, n_hidden, T, K1, K2, ln_eps, dtype, impl, semantic_only=True)


# The op; its body stays callable as ``infer_phases_impl``.
infer_phases_op = torch.library.custom_op("seda_fast::infer_phases", infer_phases_impl, mutates_args=())


@infer_phases_op.register_fake
def _(visual, noise, weights, n_hidden, T, K1, K2, ln_eps, dtype, impl):
    B, d, C = visual.shape[0], weights[0].shape[0], weights[-1].shape[0]
    return visual.new_empty(B, C, dtype=dtype), visual.new_empty(B, d, dtype=dtype), visual.new_empty(B, d, dtype=dtype)


semantic_phases_op = torch.library.custom_op("seda_fast::semantic_phases", semantic_phases_impl, mutates_args=())


@semantic_phases_op.register_fake
def _(visual, weights, n_hidden, T, K1, K2, ln_eps, dtype, impl):
    B, d = visual.shape[0], weights[0].shape[0]
    return visual.new_empty(B, d, dtype=dtype), visual.new_empty(B, d, dtype=dtype)


def _op_args(model):
    sem, n_hidden = op_args(model, "semantic")
    tr, _ = op_args(model, "translator")
    cfg = model.config
    return sem + tr, n_hidden, cfg.diffusion_steps, cfg.learner_steps, cfg.translator_steps, \
        float(model.visual_proj.norm.eps)


def semantic_phases(model, visual: Tensor, impl: str = "phases") -> tuple[Tensor, Tensor]:
    """``visual [B, Dv] -> (z [B, d], s [B, d])`` (the projected visual feature and the Learner's
    sample) as the first phases of the schedule, in the compute dtype; no autograd history."""
    return torch.ops.seda_fast.semantic_phases(visual, *_op_args(model), compute_dtype(model, visual), impl)


def infer_phases(model, visual: Tensor, noise: Tensor | None = None, impl: str = "phases"):
    """``visual [B, Dv] -> (logits [B, C], s [B, d], m [B, d])`` for a :class:`seda_fast.SeDA`
    ``model`` as a phase schedule (``impl``: ``"phases"`` or ``"persistent"``, checked by the
    launcher), in the compute dtype (autocast's when on, else the parameters'); no autograd history."""
    weights, n_hidden, T, K1, K2, ln_eps = _op_args(model)
    return torch.ops.seda_fast.infer_phases(visual, noise, weights, n_hidden, T, K1, K2, ln_eps,
                                            compute_dtype(model, visual), impl)
