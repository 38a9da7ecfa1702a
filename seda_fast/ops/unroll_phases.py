"""Custom ops around :mod:`seda_fast.kernels.unroll_phases`: the stage-2 training unroll (K2-step
Translator + PFIN loop) as phase GEMMs over all rows, forward and backward, under an activation
policy (``"save"``: every step's activations are kept; ``"recompute"``: only the per-step states,
each step's forward runs again in the backward).

``seda_fast::unroll_phases_fwd(x_start, m_start, cond, e_table, ddim, <13 weights>, policy)
-> (m [B, d], xs, ms, acts)``: ``xs [K, B, d]``, ``ms [K + 1, B, d]`` and the flat ``acts``
(empty under ``"recompute"``) are auxiliary non-differentiable outputs saved for
``seda_fast::unroll_phases_bwd``, which returns the gradients of every input but ``ddim`` as one
flat tensor (split into views for autograd).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .runtime import flat_split_plan, kernels, phase_launch, split_flat
from .translator_unroll import unroll_inputs

POLICIES = ("save", "recompute")


def saved_bytes(cfg, batch: int, dtype: torch.dtype, policy: str) -> int:
    """Bytes the phase unroll's forward keeps for its backward for a :class:`seda_fast.SeDAConfig`."""
    return kernels().unroll_phases_module.saved_bytes(batch, cfg.dim, cfg.hidden, cfg.layers, cfg.translator_steps,
                                                      dtype, policy)


@torch.library.custom_op("seda_fast::unroll_phases_fwd", mutates_args=())
def unroll_phases_fwd(x_start: Tensor, m_start: Tensor, cond: Tensor, e_table: Tensor, ddim: Tensor,
                      w_x: Tensor, w_hidden: Tensor, b_hidden: Tensor, w_out: Tensor, b_out: Tensor, w_pm: Tensor,
                      w_pu: Tensor, b_p: Tensor, w_pd: Tensor, b_pd: Tensor, w_gm: Tensor, w_gu: Tensor, b_g: Tensor,
                      policy: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(m [B, d], xs [K, B, d], ms [K + 1, B, d], acts [n])``, all in the weights' dtype."""
    return kernels().unroll_phases_forward(x_start, m_start, cond, e_table, ddim, w_x, w_hidden, b_hidden, w_out,
                                           b_out, w_pm, w_pu, b_p, w_pd, b_pd, w_gm, w_gu, b_g, policy=policy,
                                           **phase_launch(x_start))


@unroll_phases_fwd.register_fake
def _(x_start, m_start, cond, e_table, ddim, w_x, w_hidden, *rest):
    *weights, policy = rest
    (B, d), K, H = x_start.shape, e_table.shape[0], w_x.shape[0]
    n = kernels().unroll_phases_module.saved_numel(B, d, H, w_hidden.shape[0] + 1, K, policy)
    new = lambda *shape: x_start.new_empty(*shape, dtype=w_x.dtype)  # noqa: E731
    return new(B, d), new(K, B, d), new(K + 1, B, d), new(n)


@torch.library.custom_op("seda_fast::unroll_phases_bwd", mutates_args=())
def unroll_phases_bwd(grad_m: Tensor, xs: Tensor, ms: Tensor, acts: Tensor, cond: Tensor, e_table: Tensor,
                      ddim: Tensor, w_x: Tensor, w_hidden: Tensor, b_hidden: Tensor, w_out: Tensor, b_out: Tensor,
                      w_pm: Tensor, w_pu: Tensor, b_p: Tensor, w_pd: Tensor, b_pd: Tensor, w_gm: Tensor,
                      w_gu: Tensor, b_g: Tensor, policy: str) -> Tensor:
    """Gradients of ``x_start, m_start, cond, e_table`` and the 13 weights (weights' dtype), as one
    flat tensor laid out as ``kernels.unroll_phases.grad_layout`` (:func:`_grads` splits it)."""
    return kernels().unroll_phases_backward(grad_m, xs, ms, acts, cond, e_table, ddim, w_x, w_hidden, b_hidden,
                                            w_out, b_out, w_pm, w_pu, b_p, w_pd, b_pd, w_gm, w_gu, b_g,
                                            policy=policy, flat=True, **phase_launch(grad_m))


@torch.compiler.assume_constant_result
def _plan(B: int, d: int, H: int, nh: int, K: int) -> tuple:
    """The flat gradient's split plan: the op's inputs' gradients (x_start, m_start, cond, e_table,
    then the 13 weights) in order."""
    module = kernels().unroll_phases_module
    return flat_split_plan(module.grad_layout(B, d, H, nh, K), module.GRAD_ORDER)


def _dims(xs, cond, w_hidden):
    (K, B, d), H = xs.shape, cond.shape[1]
    return B, d, H, w_hidden.shape[0], K


@unroll_phases_bwd.register_fake
def _(grad_m, xs, ms, acts, cond, e_table, ddim, w_x, w_hidden, *rest):
    return grad_m.new_empty(sum(_plan(*_dims(xs, cond, w_hidden))[0]), dtype=w_x.dtype)


def _setup_context(ctx, inputs, output):
    _, _, cond, e_table, ddim, *weights, policy = inputs
    _, xs, ms, acts = output
    ctx.save_for_backward(xs, ms, acts, cond, e_table, ddim, *weights)
    ctx.mark_non_differentiable(xs, ms, acts)
    ctx.set_materialize_grads(False)
    ctx.policy = policy
    ctx.dtypes = [t.dtype for t in inputs[:-1]]


def _backward(ctx, grad_m, *_aux):
    xs, ms, acts, cond, e_table, ddim, *weights = ctx.saved_tensors
    if grad_m is None:
        return (None,) * 19
    flat = unroll_phases_bwd(grad_m.contiguous(), xs, ms, acts, cond, e_table, ddim, *weights, ctx.policy)
    grads = split_flat(flat, _plan(*_dims(xs, cond, weights[1])))
    grads = [g.to(dt) for g, dt in zip(grads, ctx.dtypes[:4] + ctx.dtypes[5:])]
    return (*grads[:4], None, *grads[4:], None)


unroll_phases_fwd.register_autograd(_backward, setup_context=_setup_context)


def unroll_phases(den, pfin, x_start: Tensor, m_start: Tensor, cond: Tensor, e_table: Tensor, ddim: Tensor,
                  policy: str = "save") -> Tensor:
    """:func:`seda_fast.ops.translator_unroll.translator_unroll` (same arguments, same result, every
    gradient) as phases, under the activation ``policy`` (``"save"`` or ``"recompute"``)."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    inputs, weights = unroll_inputs(den, pfin, x_start, m_start, cond, e_table, ddim)
    m, _, _, _ = unroll_phases_fwd(*inputs, *weights, policy)
    return m
