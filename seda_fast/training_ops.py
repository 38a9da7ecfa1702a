"""Autograd-aware ``torch.library`` custom ops around the stage-1 training kernels.

* ``seda_fast::center_loss_fwd(r, centers, labels, temperature) -> (loss [B] fp32, lse [B] fp32)``
  with its autograd formula registered (``register_autograd``): the backward launches
  ``seda_fast::center_loss_bwd`` with the saved per-row log-sum-exp (recomputing the logit tiles,
  never storing ``[B, C]``). ``lse`` is an auxiliary, non-differentiable output.
* ``seda_fast::class_sums(z, labels, num_classes) -> (sums [C, d] fp32, counts [C] fp32)`` and
  ``seda_fast::ema_update_(centers!, initialized!, sums, counts, momentum)`` (in place).

Every op has a fake (meta) implementation, so ``torch.compile`` traces through them without a
graph break. Math is fp32 whatever the input dtype; ``grad_r`` comes back in ``r``'s dtype.
Python entry points: :func:`center_loss` (= ``F.cross_entropy(reference.center_logits(r, mu, tau),
y)``) and :func:`update_centers` (= ``reference.update_centers``, with the torch.distributed
all-reduce of sums and counts between the two launches).
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import fused


def _k():
    return fused.kernels()


@torch.library.custom_op("seda_fast::center_loss_fwd", mutates_args=())
def center_loss_fwd(r: Tensor, centers: Tensor, labels: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Per-row ``CE(-||r_i - mu_c||^2 / tau, y_i)`` ``[B]`` and the shifted lse ``[B]`` (fp32)."""
    return _k().center_loss_forward(r, centers, labels, temperature)


@center_loss_fwd.register_fake
def _(r, centers, labels, temperature):
    return r.new_empty(r.shape[0], dtype=torch.float32), r.new_empty(r.shape[0], dtype=torch.float32)


@torch.library.custom_op("seda_fast::center_loss_bwd", mutates_args=())
def center_loss_bwd(grad_loss: Tensor, r: Tensor, centers: Tensor, labels: Tensor, lse: Tensor,
                    temperature: float) -> Tensor:
    """``grad_r [B, d]`` (r's dtype) from the per-row upstream gradient ``grad_loss [B]``."""
    return _k().center_loss_backward(grad_loss, r, centers, labels, lse, temperature)


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


def center_loss(r: Tensor, centers: Tensor, labels: Tensor, temperature: float, reduction: str = "mean") -> Tensor:
    """The center constraint ``L_sc``: ``r [B, d]`` (differentiable), ``centers [C, d]`` (no gradient;
    cast to r's dtype as the reference does), ``labels [B]`` -> fp32 scalar (``"mean"``, ``"sum"``) or
    ``[B]`` (``"none"``)."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if isinstance(centers, Tensor) and isinstance(r, Tensor):
        centers = centers.detach().to(r.dtype)
    loss, _ = center_loss_fwd(r, centers, labels, float(temperature))
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


@torch.library.custom_op("seda_fast::class_sums", mutates_args=())
def class_sums(z: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-class sums ``[C, d]`` (batch order) and counts ``[C]``, both fp32."""
    return _k().class_sums(z, labels, num_classes)


@class_sums.register_fake
def _(z, labels, num_classes):
    return (z.new_empty(num_classes, z.shape[1], dtype=torch.float32),
            z.new_empty(num_classes, dtype=torch.float32))


@torch.library.custom_op("seda_fast::ema_update_", mutates_args=("centers", "initialized"))
def ema_update_(centers: Tensor, initialized: Tensor, sums: Tensor, counts: Tensor, momentum: float) -> None:
    """In place: ``centers`` EMA toward ``sums / counts`` for present classes; ``initialized |= present``."""
    _k().ema_update(centers, initialized, sums, counts, momentum)


@ema_update_.register_fake
def _(centers, initialized, sums, counts, momentum):
    return None


def update_centers(centers: Tensor, initialized: Tensor, z: Tensor, labels: Tensor, momentum: float) -> None:
    """``reference.update_centers`` on buffers: ``centers [C, d]``, ``initialized [C]`` bool (both
    updated in place), ``z [B, d]``, ``labels [B]``. Two launches, with the all-reduce of sums and
    counts in between under torch.distributed."""
    with torch.no_grad():
        sums, counts = class_sums(z.detach(), labels, centers.shape[0])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(counts)
        ema_update_(centers, initialized, sums, counts, float(momentum))
