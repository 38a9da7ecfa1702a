"""Custom op ``seda_fast::semantic_sampler`` around :func:`seda_fast.kernels.semantic_sample`: the
projector + LayerNorm + K1-step Learner DDIM loop in one launch,
``visual [B, Dv] -> (z [B, d], s [B, d])``.

The op takes the weights as a flat list (:func:`seda_fast.ops.weights.weight_paths`, part
``"semantic"``), so ``torch.compile`` traces a call as one opaque op; its fake gives the shapes.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import schedule
from .runtime import check_dtype, compute_dtype, kernels
from .weights import in_dtype, model_view, op_args, prepared


def _launch(view, visual: Tensor, T: int, K1: int, ln_eps: float) -> tuple[Tensor, Tensor]:
    vp, den = view.visual_proj, view.learner
    tables = prepared(den, T, K1, visual.device)
    c0, _ = schedule.start_coefficients(T)
    return kernels().semantic_sample(visual.contiguous(), vp.linear.weight, vp.linear.bias, vp.norm.weight,
                                     vp.norm.bias, ln_eps, den.in_x.weight, den.in_c.weight, den.in_c.bias,
                                     tables["wh"], tables["bh"], den.out.weight, den.out.bias, tables["e"],
                                     tables["ddim"], c0)


def semantic_sampler_impl(visual: Tensor, weights: list[Tensor], n_hidden: int, T: int, K1: int, ln_eps: float,
                        dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(z, s)`` in ``dtype`` from the flat weight list (cast to ``dtype`` once and cached)."""
    weights, (visual,) = in_dtype(weights, [visual], dtype)
    view = model_view(weights, n_hidden, "semantic")
    check_dtype(weights[0].dtype)
    return _launch(view, visual, T, K1, ln_eps)


# The op; its body stays callable as ``semantic_sampler_impl`` (tests count what it runs).
semantic_sampler_op = torch.library.custom_op("seda_fast::semantic_sampler", semantic_sampler_impl, mutates_args=())


@semantic_sampler_op.register_fake
def _(visual, weights, n_hidden, T, K1, ln_eps, dtype):
    B, d = visual.shape[0], weights[0].shape[0]
    return visual.new_empty(B, d, dtype=dtype), visual.new_empty(B, d, dtype=dtype)


def semantic_sample(model, visual: Tensor) -> tuple[Tensor, Tensor]:
    """``visual [B, Dv] -> (z [B, d], s [B, d])`` for a :class:`seda_fast.SeDA` ``model``, in the
    compute dtype (autocast's when on, else the parameters'); no autograd history."""
    dtype = compute_dtype(model, visual)
    weights, n_hidden = op_args(model, "semantic")
    cfg = model.config
    return torch.ops.seda_fast.semantic_sampler(visual, weights, n_hidden, cfg.diffusion_steps, cfg.learner_steps,
                                                float(model.visual_proj.norm.eps), dtype)
