"""Custom ops around :mod:`seda_fast.kernels.translator_unroll`: the stage-2 training unroll (K2-step
Translator + PFIN loop) forward, saving only the per-step states, and its reverse walk.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .runtime import in_compute_dtype, kernels
from .weights import hidden_stack

# ``seda_fast::translator_unroll_fwd(x_start, m_start, cond, e_table, ddim, <13 weights>)
#   -> (m [B, d], xs, ms)``: the K2-step Translator + PFIN loop in one launch; ``xs [K, B, d]`` /
# ``ms [K + 1, B, d]`` (fp32, the per-step inputs) are auxiliary non-differentiable outputs saved for
# ``seda_fast::translator_unroll_bwd``, which walks the loop in reverse and returns the gradients of
# every input but ``ddim``.


@torch.library.custom_op("seda_fast::translator_unroll_fwd", mutates_args=())
def translator_unroll_fwd(x_start: Tensor, m_start: Tensor, cond: Tensor, e_table: Tensor, ddim: Tensor,
                          w_x: Tensor, w_hidden: Tensor, b_hidden: Tensor, w_out: Tensor, b_out: Tensor, w_pm: Tensor,
                          w_pu: Tensor, b_p: Tensor, w_pd: Tensor, b_pd: Tensor, w_gm: Tensor, w_gu: Tensor,
                          b_g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(m [B, d] (weights' dtype), xs [K, B, d] fp32, ms [K + 1, B, d] fp32)``."""
    return kernels().translator_unroll_forward(x_start, m_start, cond, e_table, ddim, w_x, w_hidden, b_hidden, w_out,
                                          b_out, w_pm, w_pu, b_p, w_pd, b_pd, w_gm, w_gu, b_g)


@translator_unroll_fwd.register_fake
def _(x_start, m_start, cond, e_table, ddim, w_x, *weights):
    (B, d), K = x_start.shape, e_table.shape[0]
    return (x_start.new_empty(B, d, dtype=w_x.dtype), x_start.new_empty(K, B, d, dtype=torch.float32),
            x_start.new_empty(K + 1, B, d, dtype=torch.float32))


@torch.library.custom_op("seda_fast::translator_unroll_bwd", mutates_args=())
def translator_unroll_bwd(grad_m: Tensor, xs: Tensor, ms: Tensor, cond: Tensor, e_table: Tensor, ddim: Tensor,
                          w_x: Tensor, w_hidden: Tensor, b_hidden: Tensor, w_out: Tensor, b_out: Tensor, w_pm: Tensor,
                          w_pu: Tensor, b_p: Tensor, w_pd: Tensor, b_pd: Tensor, w_gm: Tensor, w_gu: Tensor,
                          b_g: Tensor) -> list[Tensor]:
    """Gradients of ``x_start, m_start, cond, e_table`` and the 13 weights (weights' dtype)."""
    return list(kernels().translator_unroll_backward(grad_m, xs, ms, cond, e_table, ddim, w_x, w_hidden, b_hidden,
                                                     w_out, b_out, w_pm, w_pu, b_p, w_pd, b_pd, w_gm, w_gu, b_g))


@translator_unroll_bwd.register_fake
def _(grad_m, xs, ms, cond, e_table, ddim, *weights):
    dtype = weights[0].dtype
    like = [grad_m, grad_m, cond, e_table, *weights]
    return [torch.empty_like(t, dtype=dtype) for t in like]


def _setup_context(ctx, inputs, output):
    _, m_start, cond, e_table, ddim, *weights = inputs
    _, xs, ms = output
    ctx.save_for_backward(xs, ms, cond, e_table, ddim, *weights)
    ctx.mark_non_differentiable(xs, ms)
    ctx.set_materialize_grads(False)  # no [K, B, d] zero gradients for xs and ms
    ctx.dtypes = [t.dtype for t in inputs]


def _backward(ctx, grad_m, grad_xs, grad_ms):
    xs, ms, cond, e_table, ddim, *weights = ctx.saved_tensors
    if grad_m is None:
        return (None,) * 18
    grads = translator_unroll_bwd(grad_m.contiguous(), xs, ms, cond, e_table, ddim, *weights)
    grads = [g.to(dt) for g, dt in zip(grads, ctx.dtypes[:4] + ctx.dtypes[5:])]
    return (*grads[:4], None, *grads[4:])


translator_unroll_fwd.register_autograd(_backward, setup_context=_setup_context)


def unroll_inputs(den, pfin, x_start: Tensor, m_start: Tensor, cond: Tensor, e_table: Tensor,
                  ddim: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """``(inputs, weights)`` of the unroll ops from the modules: ``x_start, m_start, cond, e_table,
    ddim`` (contiguous, in the compute dtype; ``ddim`` fp32) and the 13 Translator + PFIN weights
    (residual layers stacked), cast differentiably to the compute dtype (autocast's when on)."""
    H = den.in_x.weight.shape[0]
    w_hidden, b_hidden = hidden_stack(den, H, den.in_x.weight.dtype, x_start.device)
    weights = [den.in_x.weight, w_hidden, b_hidden, den.out.weight, den.out.bias, pfin.p_m.weight, pfin.p_u.weight,
               pfin.p_u.bias, pfin.down.weight, pfin.down.bias, pfin.g_m.weight, pfin.g_u.weight, pfin.g_u.bias]
    cast = in_compute_dtype(weights + [x_start, m_start, cond, e_table], x_start.device)
    inputs = [t.contiguous() for t in cast[13:]] + [ddim.to(device=x_start.device, dtype=torch.float32).contiguous()]
    return inputs, cast[:13]


def translator_unroll(den, pfin, x_start: Tensor, m_start: Tensor, cond: Tensor, e_table: Tensor,
                      ddim: Tensor) -> Tensor:
    """The stage-2 training unroll (``reference.translator_pfin_sample``'s loop from an explicit start)
    as a differentiable fused op: ``den`` a ``model.Denoiser``, ``pfin`` a ``model.PFIN``;
    ``x_start [B, d]`` (``sqrt(abar_T) s + sqrt(1 - abar_T) xi``), ``m_start [B, d]`` (= z),
    ``cond [B, H]`` (``s W_c + b_a``), ``e_table [K, H]`` (row k-1 = e(tau_k)), ``ddim [K, 2]`` fp32
    -> final ``m [B, d]``. Gradients reach every tensor argument but ``ddim`` and the modules'
    parameters; under ``torch.autocast`` it computes in the autocast dtype."""
    inputs, weights = unroll_inputs(den, pfin, x_start, m_start, cond, e_table, ddim)
    m, _, _ = translator_unroll_fwd(*inputs, *weights)
    return m
