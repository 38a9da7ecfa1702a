"""The ``"triton"`` backend's training losses: :func:`learner_loss` and :func:`translator_loss` with
the signatures and the exact math of their :mod:`seda_fast.reference` namesakes (same random draws,
in the same order, from the caller's generator), the heavy parts running as fused custom ops
(:mod:`seda_fast.training_ops`); the cheap ``[B, d]``/``[B, C]`` glue (projectors, time embedding and
MLP, heads, cross-entropies, the alignment MSE) stays in torch and its autograd.

Stage 1: the center EMA (``class_sums`` + ``ema_update_``: deterministic, all-reduced under
torch.distributed), forward noising + Learner denoiser + x0 loss in one op
(``denoiser_x0_loss_fwd``/``_bwd``), the center constraint on the denoiser's ``a`` with a
streaming log-sum-exp (``center_loss_fwd``/``center_loss_bwd``).

Stage 2: ``s`` from the fused Learner sampler (no grad), the random-t diffusion term through the
same noising + denoiser + x0-loss op, and the K2-step Translator + PFIN unroll
(``unroll_fwd``/``unroll_bwd``), which keeps only the per-step states ``x_k``, ``m_k`` for its
backward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import fused, reference, training_ops
from .reference import _draw_t_eps, _rng


def learner_loss(model, visual, labels, generator=None, update: bool = True):
    """Stage-1 loss ``L_1`` (= ``reference.learner_loss``). Returns ``(loss, parts)``."""
    fused._check_dtype(model)
    cfg, den = model.config, model.learner
    z = reference.project(model.visual_proj, visual)
    if update:
        training_ops.update_centers(model.centers, model.centers_initialized, z, labels, cfg.center_momentum)
    centers = model.centers.to(z.dtype)
    x0 = centers[labels]
    t, eps = _draw_t_eps(cfg.diffusion_steps, z.shape[0], cfg.dim, z.dtype, z.device, generator)
    e_t = reference.time_features(den, t, cfg.dim, z.dtype)
    l_diff, a = training_ops.denoise_x0_loss(den, x0, eps, t, e_t, reference.condition_term(den, z),
                                             cfg.diffusion_steps)
    r = F.linear(a, model.readout.weight)
    l_sc = training_ops.center_loss(r, centers, labels, cfg.center_temperature)
    l_aux = F.cross_entropy(F.linear(z, model.aux_visual.weight, model.aux_visual.bias), labels)
    loss = l_diff + cfg.lambda_sc * l_sc + cfg.lambda_aux * l_aux
    return loss, {"diffusion": l_diff.detach(), "center": l_sc.detach(), "aux": l_aux.detach()}


def translator_loss(model, visual, labels, text, per_class_text: bool, generator=None):
    """Stage-2 loss ``L_2`` (= ``reference.translator_loss``). Returns ``(loss, parts)``."""
    fused._check_dtype(model)
    cfg, den = model.config, model.translator
    T = cfg.diffusion_steps
    with torch.no_grad():
        z = reference.project(model.visual_proj, visual)
        s = fused.semantic(model, visual).to(z.dtype)
    u = reference.project(model.text_proj, text)
    u_y = u[labels] if per_class_text else u
    target = u_y.detach()
    t, eps = _draw_t_eps(T, z.shape[0], cfg.dim, z.dtype, z.device, generator)
    xi = torch.randn(z.shape[0], cfg.dim, device=z.device, dtype=torch.float32, **_rng(generator))
    cond = reference.condition_term(den, s)
    l_diff, _ = training_ops.denoise_x0_loss(den, target, eps, t, reference.time_features(den, t, cfg.dim, z.dtype),
                                             cond, T)
    ddim, e_table = reference.sampling_tables(den, T, cfg.translator_steps, cfg.dim, s.dtype, s.device)
    m = training_ops.translator_unroll(den, model.pfin, reference._start(T, s, xi), z, cond, e_table, ddim)
    return reference.stage2_objective(model, l_diff, m, u_y, target, labels)
