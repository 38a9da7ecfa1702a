"""Custom ops around :mod:`seda_fast.kernels.denoise_phases`: the random-t diffusion term's denoiser as
phase GEMMs over all rows, forward and backward (stage 2's, and stage 1's, whose center
constraint reads the denoiser's ``a``).

``seda_fast::denoise_phases_fwd(x_t, target, cond, <5 weights>) -> (loss, a [B, H], acts, grad_x0)``:
the loss ``mean (x0_hat - target)^2`` and its gradient in ``x0_hat`` are formed in the output
phase's epilogue (``x0_hat`` itself is not returned); ``acts`` (the flat saved activations) and
``grad_x0`` are auxiliary non-differentiable outputs for ``seda_fast::denoise_phases_bwd``, which
returns the gradients of ``cond`` and the five weights from ``dL/dx0_hat`` (``grad_x0`` times the
loss's upstream gradient) and ``dL/da`` (None when nothing read ``a``), as one flat tensor (split
into views for autograd). ``x_t`` and ``target`` get none: the target is under stop-gradient and
``x_t`` is noised from it with a random draw.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import schedule
from .denoiser_x0_loss import check_no_grad
from .runtime import flat_split_plan, in_compute_dtype, kernels, phase_launch, split_flat
from .weights import hidden_stack


@torch.library.custom_op("seda_fast::denoise_phases_fwd", mutates_args=())
def denoise_phases_fwd(x_t: Tensor, target: Tensor, cond: Tensor, w_x: Tensor, w_hidden: Tensor, b_hidden: Tensor,
                       w_out: Tensor, b_out: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(loss [] fp32, a [B, H], acts [n], grad_x0 [B, d])``, ``a``, ``acts`` and ``grad_x0``
    (``dloss/dx0_hat``) in the weights' dtype; ``loss = mean (x0_hat - target)^2``."""
    _, a, acts, loss, grad_x0 = kernels().denoise_phases_forward(x_t, cond, w_x, w_hidden, b_hidden, w_out, b_out,
                                                                 target=target, **phase_launch(x_t))
    return loss, a, acts, grad_x0


@denoise_phases_fwd.register_fake
def _(x_t, target, cond, w_x, w_hidden, b_hidden, w_out, b_out):
    (B, d), H = x_t.shape, w_x.shape[0]
    n = kernels().denoise_phases_module.saved_numel(B, d, H, w_hidden.shape[0] + 1)
    return (x_t.new_empty((), dtype=torch.float32), x_t.new_empty(B, H, dtype=w_x.dtype),
            x_t.new_empty(n, dtype=w_x.dtype), x_t.new_empty(B, d, dtype=w_x.dtype))


@torch.library.custom_op("seda_fast::denoise_phases_bwd", mutates_args=())
def denoise_phases_bwd(grad_x0: Tensor, grad_a: Tensor | None, x_t: Tensor, acts: Tensor, a: Tensor, cond: Tensor,
                       w_x: Tensor, w_hidden: Tensor, b_hidden: Tensor, w_out: Tensor, b_out: Tensor) -> Tensor:
    """Gradients of ``cond`` and the five weights (weights' dtype) as one flat tensor laid out as
    ``kernels.denoise_phases.grad_layout``; ``grad_a`` None when nothing read ``a``."""
    return kernels().denoise_phases_backward(grad_x0, x_t, acts, a, cond, w_x, w_hidden, b_hidden, w_out, b_out,
                                             grad_a=grad_a, flat=True, **phase_launch(grad_x0))


@torch.compiler.assume_constant_result
def _plan(B: int, d: int, H: int, nh: int) -> tuple:
    """The flat gradient's split plan: ``cond``'s and the five weights' gradients in order."""
    module = kernels().denoise_phases_module
    return flat_split_plan(module.grad_layout(B, d, H, nh), module.GRAD_ORDER)


def _dims(x_t, cond, w_hidden):
    return x_t.shape[0], x_t.shape[1], cond.shape[1], w_hidden.shape[0]


@denoise_phases_bwd.register_fake
def _(grad_x0, grad_a, x_t, acts, a, cond, w_x, w_hidden, *weights):
    return x_t.new_empty(sum(_plan(*_dims(x_t, cond, w_hidden))[0]), dtype=w_x.dtype)


def _setup_context(ctx, inputs, output):
    x_t, _target, cond, *weights = inputs
    _loss, a, acts, unit = output
    ctx.save_for_backward(x_t, acts, a, cond, unit, *weights)
    ctx.mark_non_differentiable(acts, unit)
    ctx.set_materialize_grads(False)
    ctx.dtypes = [t.dtype for t in inputs[2:]]


def _backward(ctx, grad_loss, grad_a, _grad_acts, _grad_unit):
    x_t, acts, a, cond, unit, *weights = ctx.saved_tensors
    if grad_loss is None and grad_a is None:
        return (None,) * 8
    grad_x0 = torch.zeros_like(unit) if grad_loss is None else unit * grad_loss  # dL/dx0_hat
    flat = denoise_phases_bwd(grad_x0, None if grad_a is None else grad_a.contiguous(), x_t, acts, a, cond, *weights)
    grads = split_flat(flat, _plan(*_dims(x_t, cond, weights[1])))
    return (None, None, *(g.to(dt) for g, dt in zip(grads, ctx.dtypes)))


denoise_phases_fwd.register_autograd(_backward, setup_context=_setup_context)


def denoise_x0_term(den, target: Tensor, eps: Tensor, t: Tensor, e_t: Tensor, cond: Tensor,
                    diffusion_steps: int) -> tuple[Tensor, Tensor]:
    """The random-t diffusion term ``mean ||D(x_t, t, c) - x0||^2`` (fp32) as phases, and the denoiser's
    ``a [B, H]`` (stage 1's center constraint reads it): ``den`` a ``model.Denoiser``, ``target`` (x0)
    and ``eps`` ``[B, d]`` (no gradient: the stop-gradient target and a random draw), ``t [B]``
    integer steps, ``e_t [B, H]``, ``cond [B, H]``. ``x_t`` and ``cond + e_t`` are formed in torch;
    gradients reach ``e_t``, ``cond`` and the denoiser's parameters, from the loss and from ``a``'s
    consumers. Under ``torch.autocast`` the denoiser computes in the autocast dtype; the loss is
    taken in fp32 from the output before its rounding to that dtype."""
    check_no_grad(target, eps)
    coef = schedule.noising_table_on(diffusion_steps, t.device, target.dtype)[t]  # [B, 2]: sqrt(abar), sqrt(1 - abar)
    x_t = torch.addcmul(coef[:, :1] * target, coef[:, 1:], eps)
    w_hidden, b_hidden = hidden_stack(den, den.in_x.weight.shape[0], den.in_x.weight.dtype, target.device)
    w_x, w_hidden, b_hidden, w_out, b_out, x_t, cond_t = in_compute_dtype(
        [den.in_x.weight, w_hidden, b_hidden, den.out.weight, den.out.bias, x_t, cond + e_t], target.device)
    loss, a, _, _ = denoise_phases_fwd(x_t.contiguous(), target, cond_t.contiguous(), w_x, w_hidden, b_hidden,
                                       w_out, b_out)
    return loss, a


def denoise_x0_loss(den, target: Tensor, eps: Tensor, t: Tensor, e_t: Tensor, cond: Tensor,
                    diffusion_steps: int) -> Tensor:
    """:func:`denoise_x0_term`'s loss alone, for a caller that does not read ``a`` (stage 2)."""
    return denoise_x0_term(den, target, eps, t, e_t, cond, diffusion_steps)[0]
