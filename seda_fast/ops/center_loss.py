"""Custom ops around :mod:`seda_fast.kernels.center_loss`: the stage-1 center constraint.

``seda_fast::center_loss_fwd(r, centers, labels, temperature) -> (loss [B] fp32, lse [B] fp32)``
with its autograd formula registered: the backward launches ``seda_fast::center_loss_bwd`` with the
saved per-row log-sum-exp (recomputing the logit tiles, never storing ``[B, C]``). ``lse`` is an
auxiliary, non-differentiable output. ``seda_fast::center_loss_train(r, centers, labels,
temperature) -> (loss scalar fp32, grad_r [B, d])`` forms the mean loss and its gradient in one
launch (the backward multiplies that gradient by the upstream one). :func:`center_loss` is
``F.cross_entropy(reference.center_logits(r, mu, tau), y)``, through the one-launch op when the
mean of a loss that requires a gradient is asked for.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .runtime import kernels


@torch.library.custom_op("seda_fast::center_loss_fwd", mutates_args=())
def center_loss_fwd(r: Tensor, centers: Tensor, labels: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Per-row ``CE(-||r_i - mu_c||^2 / tau, y_i)`` ``[B]`` and the shifted lse ``[B]`` (fp32)."""
    return kernels().center_loss_forward(r, centers, labels, temperature)


@center_loss_fwd.register_fake
def _(r, centers, labels, temperature):
    return r.new_empty(r.shape[0], dtype=torch.float32), r.new_empty(r.shape[0], dtype=torch.float32)


@torch.library.custom_op("seda_fast::center_loss_bwd", mutates_args=())
def center_loss_bwd(grad_loss: Tensor, r: Tensor, centers: Tensor, labels: Tensor, lse: Tensor,
                    temperature: float) -> Tensor:
    """``grad_r [B, d]`` (r's dtype) from the per-row upstream gradient ``grad_loss [B]``."""
    return kernels().center_loss_backward(grad_loss, r, centers, labels, lse, temperature)


@center_loss_bwd.register_fake
def _(grad_loss, r, centers, labels, lse, temperature):
    return torch.empty_like(r)


def _setup_context(ctx, inputs, output):
    r, centers, labels, temperature = inputs
    ctx.save_for_backward(r, centers, labels, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.temperature = temperature


def _backward(ctx, grad_loss, grad_lse):
    r, centers, labels, lse = ctx.saved_tensors
    if grad_loss is None or not ctx.needs_input_grad[0]:
        return None, None, None, None
    grad_r = center_loss_bwd(grad_loss.to(torch.float32).contiguous(), r, centers, labels, lse, ctx.temperature)
    return grad_r, None, None, None


center_loss_fwd.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("seda_fast::center_loss_train", mutates_args=())
def center_loss_train(r: Tensor, centers: Tensor, labels: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """The mean loss (fp32 scalar, a fixed-order sum of the rows' ``loss_i / B``) and its gradient
    ``grad_r [B, d]`` (r's dtype), in one launch. In fp16/bf16 the gradient is rounded when stored
    and again when the backward scales it (the two-launch path rounds once): within the dtype's
    tolerance, no second derivative."""
    rows, grad_r = kernels().center_loss_train(r, centers, labels, temperature, 1.0 / r.shape[0])
    return rows.sum(), grad_r


@center_loss_train.register_fake
def _(r, centers, labels, temperature):
    return r.new_empty((), dtype=torch.float32), torch.empty_like(r)


def _setup_train_context(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # no zeros for the gradient output's (unused) upstream gradient


def _train_backward(ctx, grad_loss, grad_grad_r):
    if grad_loss is None or not ctx.needs_input_grad[0]:
        return None, None, None, None
    if torch.is_grad_enabled():  # create_graph=True: the saved gradient has no derivative of its own
        raise RuntimeError("seda_fast::center_loss_train has no second derivative (its gradient is formed in the "
                           "forward); take double backward with backend='eager'")
    grad_r, = ctx.saved_tensors
    return grad_r * grad_loss, None, None, None


center_loss_train.register_autograd(_train_backward, setup_context=_setup_train_context)


def center_loss(r: Tensor, centers: Tensor, labels: Tensor, temperature: float, reduction: str = "mean") -> Tensor:
    """The center constraint ``L_sc``: ``r [B, d]`` (differentiable), ``centers [C, d]`` (no gradient;
    cast to r's dtype as the reference does), ``labels [B]`` -> fp32 scalar (``"mean"``, ``"sum"``) or
    ``[B]`` (``"none"``)."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if isinstance(centers, Tensor) and isinstance(r, Tensor):
        centers = centers.detach().to(r.dtype)
    if reduction == "mean" and torch.is_grad_enabled() and r.requires_grad and r.shape[0] > 0:
        return center_loss_train(r, centers, labels, float(temperature))[0]
    loss, _ = center_loss_fwd(r, centers, labels, float(temperature))
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()
