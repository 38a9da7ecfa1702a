"""Custom op ``seda_fast::translator_pfin`` around :func:`seda_fast.kernels.translator_pfin`: the
K2-step Translator DDIM loop with PFIN's gated update, then the head, in one launch,
``(s [B, d], z [B, d], noise [B, d] or None) -> (logits [B, C], m [B, d])``.

The op takes the weights as a flat list (:func:`seda_fast.ops.weights.weight_paths`, part
``"translator"``), so ``torch.compile`` traces a call as one opaque op; its fake gives the shapes.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import schedule
from .runtime import check_dtype, compute_dtype, kernels
from .weights import in_dtype, model_view, op_args, prepared


def translator_pfin_impl(s: Tensor, z: Tensor, noise: Tensor | None, weights: list[Tensor], n_hidden: int, T: int,
                       K2: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(logits, m)`` in ``dtype``; ``noise`` (None = zeros) is used as ``noise.to(dtype)`` like the
    reference."""
    weights, (s, z, noise) = in_dtype(weights, [s, z, noise], dtype)
    view = model_view(weights, n_hidden, "translator")
    check_dtype(weights[0].dtype)
    den, pf, t = view.translator, view.pfin, prepared(view.translator, T, K2, s.device)
    c0, c1 = schedule.start_coefficients(T)
    return kernels().translator_pfin(
        s.contiguous(), z.contiguous(), None if noise is None else noise.to(s.dtype).contiguous(),
        den.in_x.weight, den.in_c.weight, den.in_c.bias, t["wh"], t["bh"], den.out.weight, den.out.bias,
        pf.p_m.weight, pf.p_u.weight, pf.p_u.bias, pf.down.weight, pf.down.bias,
        pf.g_m.weight, pf.g_u.weight, pf.g_u.bias, view.head.weight, view.head.bias,
        t["e"], t["ddim"], c0, c1)


# The op; its body stays callable as ``translator_pfin_impl`` (tests count what it runs).
translator_pfin_op = torch.library.custom_op("seda_fast::translator_pfin", translator_pfin_impl, mutates_args=())


@translator_pfin_op.register_fake
def _(s, z, noise, weights, n_hidden, T, K2, dtype):
    B, d, C = s.shape[0], s.shape[1], weights[-1].shape[0]
    return s.new_empty(B, C, dtype=dtype), s.new_empty(B, d, dtype=dtype)


def translator_pfin(model, s: Tensor, z: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(s, z, noise) -> (logits [B, C], m [B, d])`` for a :class:`seda_fast.SeDA` ``model``, in the
    compute dtype (autocast's when on, else the parameters'); no autograd history."""
    dtype = compute_dtype(model, s)
    weights, n_hidden = op_args(model, "translator")
    cfg = model.config
    return torch.ops.seda_fast.translator_pfin(s, z, noise, weights, n_hidden, cfg.diffusion_steps,
                                               cfg.translator_steps, dtype)
