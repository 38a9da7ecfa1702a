"""Custom ops around :mod:`seda_fast.kernels.denoiser_x0_loss`: the random-t diffusion term of both
stages (forward noising + denoiser + per-row x0 loss) in one launch, and its backward.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import schedule
from .runtime import in_compute_dtype, kernels
from .weights import hidden_stack

# ``seda_fast::denoiser_x0_loss_fwd(target, eps, coef, e_t, cond, <5 weights>)
#   -> (loss [B] fp32, a [B, H], x_t, x0_hat, z)``: the random-t diffusion term of both stages in one
# launch; ``x_t``, ``x0_hat``, ``z`` are auxiliary non-differentiable outputs saved for
# ``seda_fast::denoiser_x0_loss_bwd``. ``target`` and ``eps`` get no gradient (stop-gradient target,
# random noise): :func:`denoise_x0_loss` refuses ones that require it.


@torch.library.custom_op("seda_fast::denoiser_x0_loss_fwd", mutates_args=())
def denoiser_x0_loss_fwd(target: Tensor, eps: Tensor, coef: Tensor, e_t: Tensor, cond: Tensor, w_x: Tensor,
                         w_hidden: Tensor, b_hidden: Tensor, w_out: Tensor,
                         b_out: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(loss [B] fp32 (per-row sum of squares), a [B, H], x_t [B, d], x0_hat [B, d], z [B, L-1, H])``."""
    return kernels().denoiser_x0_loss_forward(target, eps, coef, e_t, cond, w_x, w_hidden, b_hidden, w_out, b_out)


@denoiser_x0_loss_fwd.register_fake
def _(target, eps, coef, e_t, cond, w_x, w_hidden, b_hidden, w_out, b_out):
    (B, d), H, n = target.shape, w_x.shape[0], w_hidden.shape[0]
    return (target.new_empty(B, dtype=torch.float32), cond.new_empty(B, H), cond.new_empty(B, d),
            cond.new_empty(B, d), cond.new_empty(B, n, H))


@torch.library.custom_op("seda_fast::denoiser_x0_loss_bwd", mutates_args=())
def denoiser_x0_loss_bwd(grad_loss: Tensor, grad_a: Tensor, target: Tensor, x_t: Tensor, x0_hat: Tensor, a: Tensor,
                         z: Tensor, w_x: Tensor, w_hidden: Tensor,
                         w_out: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(grad_a_total (= grad of e_t and cond), grad_w_x, grad_w_hidden, grad_b_hidden, grad_w_out, grad_b_out)``."""
    return kernels().denoiser_x0_loss_backward(grad_loss, grad_a, target, x_t, x0_hat, a, z, w_x, w_hidden, w_out)


@denoiser_x0_loss_bwd.register_fake
def _(grad_loss, grad_a, target, x_t, x0_hat, a, z, w_x, w_hidden, w_out):
    n, H = w_hidden.shape[0], w_x.shape[0]
    return (torch.empty_like(a), torch.empty_like(w_x), torch.empty_like(w_hidden), w_hidden.new_empty(n, H),
            torch.empty_like(w_out), w_out.new_empty(w_out.shape[0]))


def _setup_context(ctx, inputs, output):
    target, _, _, _, _, w_x, w_hidden, _, w_out, _ = inputs
    _, a, x_t, x0_hat, z = output
    ctx.save_for_backward(target, x_t, x0_hat, a, z, w_x, w_hidden, w_out)
    ctx.mark_non_differentiable(x_t, x0_hat, z)
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_loss, grad_a, grad_xt, grad_x0, grad_z):
    target, x_t, x0_hat, a, z, w_x, w_hidden, w_out = ctx.saved_tensors
    if grad_loss is None and grad_a is None:
        return (None,) * 10
    grad_loss = torch.zeros(a.shape[0], dtype=torch.float32, device=a.device) if grad_loss is None \
        else grad_loss.to(torch.float32).contiguous()
    grad_a = torch.zeros_like(a) if grad_a is None else grad_a.to(a.dtype).contiguous()
    ga, gw_x, gw_h, gb_h, gw_o, gb_o = denoiser_x0_loss_bwd(grad_loss, grad_a, target, x_t, x0_hat, a, z, w_x,
                                                            w_hidden, w_out)
    return None, None, None, ga, ga, gw_x, gw_h, gb_h, gw_o, gb_o


denoiser_x0_loss_fwd.register_autograd(_backward, setup_context=_setup_context)


def check_no_grad(target, eps) -> None:
    """The diffusion term's ``target`` and ``eps`` must not require grad (checked before any launch):
    the target is under stop-gradient (docs/math.md) and the noise a random draw, so no gradient is formed
    for them and one asked for would be silently dropped."""
    for name, tensor in (("target", target), ("eps", eps)):
        if isinstance(tensor, Tensor) and tensor.requires_grad:
            raise ValueError(f"{name} must not require grad: the diffusion target is under stop-gradient "
                             "and the noise is a random draw; detach it")


def denoise_x0_loss(den, target: Tensor, eps: Tensor, t: Tensor, e_t: Tensor, cond: Tensor,
                    diffusion_steps: int) -> tuple[Tensor, Tensor]:
    """The random-t diffusion term ``||D(x_t, t, c) - x0||^2`` (mean over batch and features, fp32) with
    ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``, fused: ``den`` a ``model.Denoiser``, ``target``
    (x0) and ``eps`` ``[B, d]`` (no gradient: the spec's stop-gradient target and a random draw),
    ``t [B]`` integer steps, ``e_t [B, H]``, ``cond [B, H]`` -> ``(loss, a [B, H])``. Gradients reach
    ``e_t``, ``cond``, ``a``'s consumers and the denoiser's parameters; under ``torch.autocast`` the
    denoiser computes in the autocast dtype while ``target`` keeps its own dtype in the loss."""
    check_no_grad(target, eps)
    coef = schedule.noising_table_on(diffusion_steps, t.device, torch.float32)[t]  # [B, 2]: sqrt(abar), sqrt(1 - abar)
    w_hidden, b_hidden = hidden_stack(den, den.in_x.weight.shape[0], den.in_x.weight.dtype, target.device)
    w_x, w_hidden, b_hidden, w_out, b_out, e_t, cond = in_compute_dtype(
        [den.in_x.weight, w_hidden, b_hidden, den.out.weight, den.out.bias, e_t, cond], target.device)
    loss, a, _, _, _ = denoiser_x0_loss_fwd(target.contiguous(), eps.contiguous(), coef,
                                            e_t.contiguous(), cond.contiguous(), w_x, w_hidden, b_hidden, w_out,
                                            b_out)
    return loss.sum() / target.numel(), a
