"""Autograd-aware ``torch.library`` custom ops around the training kernels (``seda_fast.fused_training``
composes them into the two losses).

* ``seda_fast::center_loss_fwd(r, centers, labels, temperature) -> (loss [B] fp32, lse [B] fp32)``
  with its autograd formula registered (``register_autograd``): the backward launches
  ``seda_fast::center_loss_bwd`` with the saved per-row log-sum-exp (recomputing the logit tiles,
  never storing ``[B, C]``). ``lse`` is an auxiliary, non-differentiable output.
* ``seda_fast::class_sums(z, labels, num_classes) -> (sums [C, d] fp32, counts [C] fp32)`` and
  ``seda_fast::ema_update_(centers!, initialized!, sums, counts, momentum)`` (in place).
* ``seda_fast::denoiser_x0_loss_fwd``/``_bwd``: forward noising + denoiser + per-row x0 loss, the
  random-t diffusion term of both stages.
* ``seda_fast::unroll_fwd``/``_bwd``: the stage-2 K2-step Translator + PFIN loop and its reverse walk.

Every op has a fake (meta) implementation, so ``torch.compile`` traces through them without a
graph break; auxiliary outputs saved for a backward are non-differentiable and get no
materialised zero gradients. Math is fp32 whatever the input dtype; gradients come back in their
input's dtype. Python entry points: :func:`center_loss` (= ``F.cross_entropy(reference.center_logits(
r, mu, tau), y)``), :func:`update_centers` (= ``reference.update_centers``, with the
torch.distributed all-reduce of sums and counts between the two launches),
:func:`denoise_x0_loss` and :func:`translator_unroll` (on ``model.Denoiser``/``model.PFIN``
modules; under ``torch.autocast`` they compute in the autocast dtype).
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import fused, schedule


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


def _in_compute_dtype(tensors, device: torch.device) -> list:
    """``tensors`` cast (differentiably) to the autocast dtype when autocast is on for ``device``,
    else to the first one's dtype (the weights'): the kernels take one dtype, and under AMP the
    gradients flow back to the fp32 master weights as fp32."""
    dtype = fused.autocast_dtype(device, tensors[0].dtype)
    return [t.to(dtype) for t in tensors]


# --------------------------------------------------------------------------- noising + denoiser + x0 loss
#
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
    return _k().denoiser_x0_loss_forward(target, eps, coef, e_t, cond, w_x, w_hidden, b_hidden, w_out, b_out)


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
    return _k().denoiser_x0_loss_backward(grad_loss, grad_a, target, x_t, x0_hat, a, z, w_x, w_hidden, w_out)


@denoiser_x0_loss_bwd.register_fake
def _(grad_loss, grad_a, target, x_t, x0_hat, a, z, w_x, w_hidden, w_out):
    n, H = w_hidden.shape[0], w_x.shape[0]
    return (torch.empty_like(a), torch.empty_like(w_x), torch.empty_like(w_hidden), w_hidden.new_empty(n, H),
            torch.empty_like(w_out), w_out.new_empty(w_out.shape[0]))


def _x0_loss_setup_context(ctx, inputs, output):
    target, _, _, _, _, w_x, w_hidden, _, w_out, _ = inputs
    _, a, x_t, x0_hat, z = output
    ctx.save_for_backward(target, x_t, x0_hat, a, z, w_x, w_hidden, w_out)
    ctx.mark_non_differentiable(x_t, x0_hat, z)
    ctx.set_materialize_grads(False)


def _x0_loss_backward(ctx, grad_loss, grad_a, grad_xt, grad_x0, grad_z):
    target, x_t, x0_hat, a, z, w_x, w_hidden, w_out = ctx.saved_tensors
    if grad_loss is None and grad_a is None:
        return (None,) * 10
    grad_loss = torch.zeros(a.shape[0], dtype=torch.float32, device=a.device) if grad_loss is None \
        else grad_loss.to(torch.float32).contiguous()
    grad_a = torch.zeros_like(a) if grad_a is None else grad_a.to(a.dtype).contiguous()
    ga, gw_x, gw_h, gb_h, gw_o, gb_o = denoiser_x0_loss_bwd(grad_loss, grad_a, target, x_t, x0_hat, a, z, w_x,
                                                            w_hidden, w_out)
    return None, None, None, ga, ga, gw_x, gw_h, gb_h, gw_o, gb_o


denoiser_x0_loss_fwd.register_autograd(_x0_loss_backward, setup_context=_x0_loss_setup_context)


def denoise_x0_loss(den, target: Tensor, eps: Tensor, t: Tensor, e_t: Tensor, cond: Tensor,
                    diffusion_steps: int) -> tuple[Tensor, Tensor]:
    """The random-t diffusion term ``||D(x_t, t, c) - x0||^2`` (mean over batch and features, fp32) with
    ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``, fused: ``den`` a ``model.Denoiser``, ``target``
    (x0) and ``eps`` ``[B, d]`` (no gradient: the spec's stop-gradient target and a random draw),
    ``t [B]`` integer steps, ``e_t [B, H]``, ``cond [B, H]`` -> ``(loss, a [B, H])``. Gradients reach
    ``e_t``, ``cond``, ``a``'s consumers and the denoiser's parameters; under ``torch.autocast`` the
    denoiser computes in the autocast dtype while ``target`` keeps its own dtype in the loss."""
    for name, tensor in (("target", target), ("eps", eps)):
        if isinstance(tensor, Tensor) and tensor.requires_grad:
            raise ValueError(f"{name} must not require grad: the diffusion target is under stop-gradient "
                             "(SPEC) and the noise is a random draw; detach it")
    sa, sb = schedule.noising_coefficients(diffusion_steps, t, torch.float32)
    w_hidden, b_hidden = fused.hidden_stack(den, den.in_x.weight.shape[0], den.in_x.weight.dtype, target.device)
    w_x, w_hidden, b_hidden, w_out, b_out, e_t, cond = _in_compute_dtype(
        [den.in_x.weight, w_hidden, b_hidden, den.out.weight, den.out.bias, e_t, cond], target.device)
    loss, a, _, _, _ = denoiser_x0_loss_fwd(target.contiguous(), eps.contiguous(), torch.cat([sa, sb], 1),
                                            e_t.contiguous(), cond.contiguous(), w_x, w_hidden, b_hidden, w_out,
                                            b_out)
    return loss.sum() / target.numel(), a


# --------------------------------------------------------------------------- stage-2 unroll
#
# ``seda_fast::unroll_fwd(x_start, m_start, cond, e_table, ddim, <13 weights>) -> (m [B, d], xs, ms)``:
# the K2-step Translator + PFIN loop in one launch; ``xs [K, B, d]`` / ``ms [K + 1, B, d]`` (fp32, the
# per-step inputs) are auxiliary non-differentiable outputs saved for ``seda_fast::unroll_bwd``, which
# walks the loop in reverse and returns the gradients of every input but ``ddim``.

@torch.library.custom_op("seda_fast::unroll_fwd", mutates_args=())
def unroll_fwd(x_start: Tensor, m_start: Tensor, cond: Tensor, e_table: Tensor, ddim: Tensor, w_x: Tensor,
               w_hidden: Tensor, b_hidden: Tensor, w_out: Tensor, b_out: Tensor, w_pm: Tensor, w_pu: Tensor,
               b_p: Tensor, w_pd: Tensor, b_pd: Tensor, w_gm: Tensor, w_gu: Tensor,
               b_g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(m [B, d] (weights' dtype), xs [K, B, d] fp32, ms [K + 1, B, d] fp32)``."""
    return _k().translator_unroll_forward(x_start, m_start, cond, e_table, ddim, w_x, w_hidden, b_hidden, w_out,
                                          b_out, w_pm, w_pu, b_p, w_pd, b_pd, w_gm, w_gu, b_g)


@unroll_fwd.register_fake
def _(x_start, m_start, cond, e_table, ddim, w_x, *weights):
    (B, d), K = x_start.shape, e_table.shape[0]
    return (x_start.new_empty(B, d, dtype=w_x.dtype), x_start.new_empty(K, B, d, dtype=torch.float32),
            x_start.new_empty(K + 1, B, d, dtype=torch.float32))


@torch.library.custom_op("seda_fast::unroll_bwd", mutates_args=())
def unroll_bwd(grad_m: Tensor, xs: Tensor, ms: Tensor, cond: Tensor, e_table: Tensor, ddim: Tensor, w_x: Tensor,
               w_hidden: Tensor, b_hidden: Tensor, w_out: Tensor, b_out: Tensor, w_pm: Tensor, w_pu: Tensor,
               b_p: Tensor, w_pd: Tensor, b_pd: Tensor, w_gm: Tensor, w_gu: Tensor, b_g: Tensor) -> list[Tensor]:
    """Gradients of ``x_start, m_start, cond, e_table`` and the 13 weights (weights' dtype)."""
    return list(_k().translator_unroll_backward(grad_m, xs, ms, cond, e_table, ddim, w_x, w_hidden, b_hidden,
                                                w_out, b_out, w_pm, w_pu, b_p, w_pd, b_pd, w_gm, w_gu, b_g))


@unroll_bwd.register_fake
def _(grad_m, xs, ms, cond, e_table, ddim, *weights):
    dtype = weights[0].dtype
    like = [grad_m, grad_m, cond, e_table, *weights]
    return [torch.empty_like(t, dtype=dtype) for t in like]


def _unroll_setup_context(ctx, inputs, output):
    _, m_start, cond, e_table, ddim, *weights = inputs
    _, xs, ms = output
    ctx.save_for_backward(xs, ms, cond, e_table, ddim, *weights)
    ctx.mark_non_differentiable(xs, ms)
    ctx.set_materialize_grads(False)  # no [K, B, d] zero gradients for xs and ms
    ctx.dtypes = [t.dtype for t in inputs]


def _unroll_backward(ctx, grad_m, grad_xs, grad_ms):
    xs, ms, cond, e_table, ddim, *weights = ctx.saved_tensors
    if grad_m is None:
        return (None,) * 18
    grads = unroll_bwd(grad_m.contiguous(), xs, ms, cond, e_table, ddim, *weights)
    grads = [g.to(dt) for g, dt in zip(grads, ctx.dtypes[:4] + ctx.dtypes[5:])]
    return (*grads[:4], None, *grads[4:])


unroll_fwd.register_autograd(_unroll_backward, setup_context=_unroll_setup_context)


def translator_unroll(den, pfin, x_start: Tensor, m_start: Tensor, cond: Tensor, e_table: Tensor,
                      ddim: Tensor) -> Tensor:
    """The stage-2 training unroll (``reference.translator_pfin_sample``'s loop from an explicit start)
    as a differentiable fused op: ``den`` a ``model.Denoiser``, ``pfin`` a ``model.PFIN``;
    ``x_start [B, d]`` (``sqrt(abar_T) s + sqrt(1 - abar_T) xi``), ``m_start [B, d]`` (= z),
    ``cond [B, H]`` (``s W_c + b_a``), ``e_table [K, H]`` (row k-1 = e(tau_k)), ``ddim [K, 2]`` fp32
    -> final ``m [B, d]``. Gradients reach every tensor argument but ``ddim`` and the modules'
    parameters; under ``torch.autocast`` it computes in the autocast dtype."""
    H = den.in_x.weight.shape[0]
    w_hidden, b_hidden = fused.hidden_stack(den, H, den.in_x.weight.dtype, x_start.device)
    weights = [den.in_x.weight, w_hidden, b_hidden, den.out.weight, den.out.bias, pfin.p_m.weight, pfin.p_u.weight,
               pfin.p_u.bias, pfin.down.weight, pfin.down.bias, pfin.g_m.weight, pfin.g_u.weight, pfin.g_u.bias]
    cast = _in_compute_dtype(weights + [x_start, m_start, cond, e_table], x_start.device)
    weights, (x_start, m_start, cond, e_table) = cast[:13], cast[13:]
    m, _, _ = unroll_fwd(x_start.contiguous(), m_start.contiguous(), cond.contiguous(), e_table.contiguous(),
                         ddim.to(device=x_start.device, dtype=torch.float32).contiguous(), *weights)
    return m
