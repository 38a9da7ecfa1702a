"""The ``"triton"`` backend's training losses: :mod:`seda_fast.reference`'s :func:`learner_loss` and
:func:`translator_loss` themselves (so the same random draws, in the same order, from the caller's
generator, by construction), given :class:`FusedPieces`: the heavy parts as fused custom ops
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

from . import fused, reference, training_ops


class FusedPieces(reference.EagerPieces):
    """:class:`seda_fast.reference.EagerPieces` with the heavy parts as fused custom ops."""

    def check(self, model) -> None:
        fused._check_dtype(model)

    def update_centers(self, model, z, labels) -> None:
        training_ops.update_centers(model.centers, model.centers_initialized, z, labels,
                                    model.config.center_momentum)

    def diffusion_term(self, den, x0, eps, t, e_t, cond, T: int):
        return training_ops.denoise_x0_loss(den, x0, eps, t, e_t, cond, T)

    def center_loss(self, r, centers, labels, temperature: float):
        return training_ops.center_loss(r, centers, labels, temperature)

    def semantic(self, model, visual, z):
        return fused.semantic(model, visual).to(z.dtype)

    def unroll(self, model, s, z, xi, cond):
        cfg, den = model.config, model.translator
        T = cfg.diffusion_steps
        ddim, e_table = reference.sampling_tables(den, T, cfg.translator_steps, cfg.dim, s.dtype, s.device)
        return training_ops.translator_unroll(den, model.pfin, reference._start(T, s, xi), z, cond, e_table, ddim)


FUSED = FusedPieces()


def learner_loss(model, visual, labels, generator=None, update: bool = True):
    """Stage-1 loss ``L_1``: :func:`seda_fast.reference.learner_loss` with the fused pieces."""
    return reference.learner_loss(model, visual, labels, generator, update, pieces=FUSED)


def translator_loss(model, visual, labels, text, per_class_text: bool, generator=None):
    """Stage-2 loss ``L_2``: :func:`seda_fast.reference.translator_loss` with the fused pieces."""
    return reference.translator_loss(model, visual, labels, text, per_class_text, generator, pieces=FUSED)
