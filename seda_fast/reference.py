"""Eager PyTorch reference of SeDA: docs/math.md, top to bottom, in plain torch ops.

Every function takes the parameter containers of :class:`seda_fast.model.SeDA` (``nn.Linear``
and ``nn.LayerNorm`` modules, weights ``[out, in]``) and spells the spec's math out with
``F.linear``; nothing here is fused or clever, so it is the yardstick the Triton kernels are
compared with. Shapes: B batch, Dv/Dt input widths, d semantic width, H hidden width,
C classes, K sampling steps.

Random draws (both backends make exactly these, in this order, from the caller's generator,
always in float32 and then cast, so a dtype change does not change the draws):

* ``learner_loss``: ``t ~ U{1..T}`` ``[B]`` (int64), then ``eps ~ N(0, I)`` ``[B, d]``.
* ``translator_loss``: ``t`` ``[B]``, ``eps`` ``[B, d]``, then the unroll's start noise
  ``xi`` ``[B, d]``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import schedule

# --------------------------------------------------------------------------- building blocks


def project(proj, x: torch.Tensor) -> torch.Tensor:
    """Projector ``LayerNorm(x W + b)``: ``[N, D_in] -> [N, d]``."""
    y = F.linear(x, proj.linear.weight, proj.linear.bias)
    return F.layer_norm(y, proj.norm.normalized_shape, proj.norm.weight, proj.norm.bias, proj.norm.eps)


def sinusoidal_embedding(t: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """``emb(t) = [sin(t w_j), cos(t w_j)]_{j < d/2}``, ``w_j = exp(-ln(10000) j / (d/2))``.

    ``t`` ``[N]`` (integer steps) -> ``[N, dim]``; evaluated in float64 and cast to ``dtype``.
    """
    half = dim // 2
    j = torch.arange(half, dtype=torch.float64, device=t.device)
    w = torch.exp(-math.log(10000.0) * j / half)
    arg = t.to(torch.float64).unsqueeze(1) * w.unsqueeze(0)
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1).to(dtype)


def embedding_table(T: int, dim: int, dtype: torch.dtype, device) -> torch.Tensor:
    """:func:`sinusoidal_embedding` of every step t = 0..T, ``[T + 1, dim]`` (cached per device,
    read-only): ``table[t]`` is ``emb(t)`` in one gather."""
    return schedule.device_cached(("emb", int(T), int(dim), dtype),
                                  lambda dev: sinusoidal_embedding(torch.arange(T + 1, device=dev), dim, dtype), device)


def time_mlp(den, emb: torch.Tensor) -> torch.Tensor:
    """``W_e2 SiLU(W_e1 emb + b_e1) + b_e2``: ``[N, dim] -> [N, H]``."""
    h = F.silu(F.linear(emb, den.time_in.weight, den.time_in.bias))
    return F.linear(h, den.time_out.weight, den.time_out.bias)


def time_features(den, t: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """``e_t = W_e2 SiLU(W_e1 emb(t) + b_e1) + b_e2``: ``t [N] -> [N, H]``."""
    return time_mlp(den, sinusoidal_embedding(t, dim, dtype))


def condition_term(den, c: torch.Tensor) -> torch.Tensor:
    """The loop-invariant part of the interactive features, ``c W_c + b_a``: ``[B, d] -> [B, H]``."""
    return F.linear(c, den.in_c.weight, den.in_c.bias)


def denoise(den, x_t: torch.Tensor, e_t: torch.Tensor, cond: torch.Tensor):
    """Denoiser ``D(x_t, t, c) -> (x0_hat [B, d], a [B, H])``.

    ``e_t`` is ``[B, H]`` or a broadcastable ``[H]`` row; ``cond`` is :func:`condition_term`.
    """
    a = F.linear(x_t, den.in_x.weight) + cond + e_t
    h = F.silu(a)
    for layer in den.hidden:
        h = h + F.silu(F.linear(h, layer.weight, layer.bias))
    return F.linear(h, den.out.weight, den.out.bias), a


def pfin_step(pfin, m: torch.Tensor, x0_hat: torch.Tensor, e_k: torch.Tensor) -> torch.Tensor:
    """One Progressive Feature Interaction update ``m <- m + g * delta``: all ``[B, d]``, ``e_k [H]``."""
    p = F.linear(m, pfin.p_m.weight) + F.linear(x0_hat, pfin.p_u.weight, pfin.p_u.bias) + e_k
    delta = F.linear(F.silu(p), pfin.down.weight, pfin.down.bias)
    g = torch.sigmoid(F.linear(m, pfin.g_m.weight) + F.linear(x0_hat, pfin.g_u.weight, pfin.g_u.bias))
    return m + g * delta


def sampling_tables(den, T: int, K: int, dim: int, dtype: torch.dtype, device):
    """Per-call tables of a K-step sampler: ``(ddim [K, 2], e_table [K, H] dtype)``; ``ddim`` is
    float64 for a float64 ``dtype`` (a float64 model is a float64 reference), float32 otherwise.

    Row k-1 belongs to step k (t = tau_k): ``(a_k, b_k)`` and ``e(tau_k)``.
    """
    return ddim_table(T, K, dtype, device), time_features(den, schedule.sampling_timesteps_on(T, K, device), dim, dtype)


def ddim_table(T: int, K: int, dtype: torch.dtype, device) -> torch.Tensor:
    """A K-step sampler's ``[K, 2]`` DDIM coefficients for a model computing in ``dtype``: float64
    for float64, float32 otherwise (cached per device, read-only)."""
    return schedule.ddim_coefficients_on(T, K, device, torch.float64 if dtype == torch.float64 else torch.float32)


def _ddim_update(x, x0_hat, coef_row):
    """``x_{t'} = a_k x_t + b_k x0_hat`` with the table's coefficients, in x's dtype."""
    return coef_row[0].to(x.dtype) * x + coef_row[1].to(x.dtype) * x0_hat


def _start(T: int, cond: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """``x_{tau_K} = sqrt(abar_T) c + sqrt(1 - abar_T) xi`` (``noise=None`` means ``xi = 0``)."""
    c0, c1 = schedule.start_coefficients(T)
    x = c0 * cond
    return x if noise is None else torch.add(x, noise.to(cond.dtype), alpha=c1)  # one kernel for + c1 xi


# --------------------------------------------------------------------------- samplers


def inference_tables(model, dtype: torch.dtype, device):
    """Both samplers' per-call tables, ``((ddim1, e1), (ddim2, e2))`` (see :func:`sampling_tables`).
    They depend on weights only; pass them to the samplers to keep host work out of a timed or
    captured loop."""
    cfg = model.config
    return tuple(sampling_tables(den, cfg.diffusion_steps, K, cfg.dim, dtype, device)
                 for den, K in ((model.learner, cfg.learner_steps), (model.translator, cfg.translator_steps)))


def learner_sample(model, z: torch.Tensor, tables=None) -> torch.Tensor:
    """DCSL: K1-step DDIM sample of the semantic feature ``s [B, d]`` conditioned on ``z [B, d]``.
    ``tables``: this sampler's ``(ddim, e_table)``, computed here when None."""
    cfg, den = model.config, model.learner
    coef, e_table = tables or sampling_tables(den, cfg.diffusion_steps, cfg.learner_steps, cfg.dim, z.dtype,
                                              z.device)
    cond = condition_term(den, z)
    x = _start(cfg.diffusion_steps, z, None)
    for k in range(cfg.learner_steps, 0, -1):
        x0_hat, _ = denoise(den, x, e_table[k - 1], cond)
        x = _ddim_update(x, x0_hat, coef[k - 1])
    return x


def translator_pfin_sample(model, s: torch.Tensor, z: torch.Tensor, noise: torch.Tensor | None = None,
                           tables=None):
    """DCST + PFIN: K2-step DDIM loop over text space, conditioned on ``s``, with ``m <- z`` mapped
    one PFIN step per DDIM step. Returns ``(x [B, d], m [B, d])``. ``tables`` as in learner_sample."""
    cfg, den = model.config, model.translator
    coef, e_table = tables or sampling_tables(den, cfg.diffusion_steps, cfg.translator_steps, cfg.dim, s.dtype,
                                              s.device)
    cond = condition_term(den, s)
    x = _start(cfg.diffusion_steps, s, noise)
    m = z
    for k in range(cfg.translator_steps, 0, -1):
        x0_hat, _ = denoise(den, x, e_table[k - 1], cond)
        m = pfin_step(model.pfin, m, x0_hat, e_table[k - 1])
        x = _ddim_update(x, x0_hat, coef[k - 1])
    return x, m


def semantic(model, visual: torch.Tensor) -> torch.Tensor:
    """``visual [B, Dv] -> s [B, d]``: projector, then the Learner's sampler."""
    return learner_sample(model, project(model.visual_proj, visual))


def infer(model, visual: torch.Tensor, noise: torch.Tensor | None = None, tables=None):
    """The inference chain: ``visual [B, Dv] -> (logits [B, C], s [B, d], m [B, d])``.
    ``tables``: optional :func:`inference_tables` output."""
    z = project(model.visual_proj, visual)
    s = learner_sample(model, z, tables and tables[0])
    _, m = translator_pfin_sample(model, s, z, noise, tables and tables[1])
    logits = F.linear(m, model.head.weight, model.head.bias)
    return logits, s, m


# --------------------------------------------------------------------------- training


def class_sums(z: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """Deterministic per-class sums ``[C, d]`` (one-hot matmul, no atomics) and counts ``[C]``.

    A row with a NaN or Inf anywhere contributes nothing to its class's sum or count (it is
    zeroed before the matmul, where ``0 * NaN`` would otherwise reach every class). The mask is
    computed on the device: no host sync. Accumulation is float64 for float64 ``z`` (a float64
    model is a float64 reference), float32 otherwise."""
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    z = z.to(acc)
    finite = torch.isfinite(z).all(dim=1, keepdim=True)
    onehot = F.one_hot(labels, num_classes).to(acc) * finite
    return onehot.t() @ torch.where(finite, z, 0.0), onehot.sum(0)


def update_centers(model, z: torch.Tensor, labels: torch.Tensor) -> None:
    """EMA of the category centers from one stage-1 batch (no gradient).

    ``mu_c <- alpha mu_c + (1 - alpha) mean{z_i : y_i = c}`` for the classes present; a class's
    first batch sets ``mu_c`` to its mean. Rows with a NaN/Inf are left out of the means (a class
    whose rows are all non-finite counts as absent and keeps its center). Under torch.distributed
    the sums and counts are all-reduced first, so every rank ends with identical centers.
    """
    with torch.no_grad():
        sums, counts = class_sums(z.detach(), labels, model.config.num_classes)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(counts)
        present = counts > 0
        mean = sums / counts.clamp_min(1).unsqueeze(1)
        alpha = model.config.center_momentum
        mu = model.centers.to(sums.dtype)
        ema = torch.where(model.centers_initialized.unsqueeze(1), alpha * mu + (1 - alpha) * mean, mean)
        model.centers.copy_(torch.where(present.unsqueeze(1), ema, mu))
        model.centers_initialized |= present


def center_logits(r: torch.Tensor, centers: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits_sc[i, c] = -||r_i - mu_c||^2 / tau_sc``: ``r [B, d], centers [C, d] -> [B, C]``."""
    sq = (r * r).sum(1, keepdim=True) - 2.0 * r @ centers.t() + (centers * centers).sum(1).unsqueeze(0)
    return -sq / temperature


def weighted_sum(first: torch.Tensor, *terms: tuple[float, torch.Tensor]) -> torch.Tensor:
    """``first + sum_i w_i x_i`` for ``terms = ((w_i, x_i), ...)``, left to right, one ``add(alpha=w)``
    per term (one kernel each way instead of a multiply and an add)."""
    for w, x in terms:
        first = torch.add(first, x, alpha=w)
    return first


def _rng(generator) -> dict:
    """``generator=`` only when one is given: the explicit ``generator=None`` overloads of
    randint/randn reject the symbolic batch size torch.compile uses after a shape change."""
    return {} if generator is None else {"generator": generator}


def _draw_t_eps(T: int, batch: int, dim: int, dtype, device, generator):
    t = torch.randint(1, T + 1, (batch,), device=device, **_rng(generator))
    eps = torch.randn(batch, dim, device=device, dtype=torch.float32, **_rng(generator)).to(dtype)
    return t, eps


def _noised(T: int, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Forward noising ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``."""
    sa, sb = schedule.noising_coefficients(T, t, x0.dtype)
    return sa * x0 + sb * eps


class EagerPieces:
    """The heavy parts of the two training losses in plain torch ops (autograd records them). A
    backend passes its own pieces, with these signatures, to :func:`learner_loss` and
    :func:`translator_loss`; the losses themselves, and so the random draws and their order, are
    written once, here."""

    def check(self, model) -> None:
        """Reject a model this backend cannot train (the eager one trains every dtype)."""

    def update_centers(self, model, z: torch.Tensor, labels: torch.Tensor) -> None:
        update_centers(model, z, labels)

    def time_features(self, den, t, dim: int, dtype, T: int):
        """``e_t [B, H]`` of the random steps ``t [B]`` (in 1..T)."""
        return time_features(den, t, dim, dtype)

    def translator_tables(self, den, t, T: int, K: int, dim: int, dtype):
        """Stage 2's time features: ``(e_t [B, H], (ddim [K, 2], e_table [K, H]))``, the random steps'
        and the K-step unroll's tables (:func:`sampling_tables`)."""
        return time_features(den, t, dim, dtype), sampling_tables(den, T, K, dim, dtype, t.device)

    def diffusion_term(self, model, den, x0, eps, t, e_t, cond, T: int):
        """Random-t diffusion term ``(mean ||D(x_t) - x0||^2, a)`` with ``x_t`` noised from ``x0``."""
        x0_hat, a = denoise(den, _noised(T, x0, t, eps), e_t, cond)
        return F.mse_loss(x0_hat, x0), a

    def diffusion_loss(self, model, den, x0, eps, t, e_t, cond, T: int):
        """The random-t diffusion term's loss alone (stage 2: nothing reads its ``a``)."""
        return self.diffusion_term(model, den, x0, eps, t, e_t, cond, T)[0]

    def center_loss(self, r, centers, labels, temperature: float):
        return F.cross_entropy(center_logits(r, centers, temperature), labels)

    def semantic(self, model, visual, z):
        """The Learner's sample ``s`` of ``z`` (called under no_grad)."""
        return learner_sample(model, z)

    def unroll(self, model, s, z, xi, cond, tables=None):
        """The K2-step Translator + PFIN loop from start noise ``xi``: the final ``m [B, d]``;
        ``tables`` its ``(ddim, e_table)``, computed here when None."""
        return translator_pfin_sample(model, s, z, xi, tables)[1]


EAGER = EagerPieces()


def learner_loss(model, visual: torch.Tensor, labels: torch.Tensor, generator=None, update: bool = True,
                 pieces: EagerPieces = EAGER):
    """Stage-1 loss ``L_1`` (docs/math.md, "Stage 1"). Centers are updated first (when ``update``), so a
    class's first batch already has a center to diffuse to. Returns ``(loss, parts)``."""
    pieces.check(model)
    cfg, den = model.config, model.learner
    z = project(model.visual_proj, visual)
    if update:
        pieces.update_centers(model, z, labels)
    centers = model.centers.to(z.dtype)
    x0 = centers[labels]
    t, eps = _draw_t_eps(cfg.diffusion_steps, z.shape[0], cfg.dim, z.dtype, z.device, generator)
    e_t = pieces.time_features(den, t, cfg.dim, z.dtype, cfg.diffusion_steps)
    l_diff, a = pieces.diffusion_term(model, den, x0, eps, t, e_t, condition_term(den, z), cfg.diffusion_steps)
    r = F.linear(a, model.readout.weight)
    l_sc = pieces.center_loss(r, centers, labels, cfg.center_temperature)
    l_aux = F.cross_entropy(F.linear(z, model.aux_visual.weight, model.aux_visual.bias), labels)
    loss = weighted_sum(l_diff, (cfg.lambda_sc, l_sc), (cfg.lambda_aux, l_aux))
    return loss, {"diffusion": l_diff.detach(), "center": l_sc.detach(), "aux": l_aux.detach()}


def translator_loss(model, visual, labels, text, per_class_text: bool, generator=None,
                    pieces: EagerPieces = EAGER):
    """Stage-2 loss ``L_2`` (docs/math.md, "Stage 2"): random-t diffusion loss + the unrolled K2-step
    Translator/PFIN loop from ``xi ~ N(0, I)``. Returns ``(loss, parts)``."""
    pieces.check(model)
    cfg, den = model.config, model.translator
    with torch.no_grad():
        z = project(model.visual_proj, visual)
        s = pieces.semantic(model, visual, z)
    u = project(model.text_proj, text)
    u_y = u[labels] if per_class_text else u
    target = u_y.detach()
    t, eps = _draw_t_eps(cfg.diffusion_steps, z.shape[0], cfg.dim, z.dtype, z.device, generator)
    xi = torch.randn(z.shape[0], cfg.dim, device=z.device, dtype=torch.float32, **_rng(generator))
    cond = condition_term(den, s)
    e_t, tables = pieces.translator_tables(den, t, cfg.diffusion_steps, cfg.translator_steps, cfg.dim, z.dtype)
    l_diff = pieces.diffusion_loss(model, den, target, eps, t, e_t, cond, cfg.diffusion_steps)
    m = pieces.unroll(model, s, z, xi, cond, tables)
    return stage2_objective(model, l_diff, m, u_y, target, labels)


def stage2_objective(model, l_diff, m, u_y, target, labels):
    """``L_2`` from its diffusion term and the unroll's final ``m [B, d]``: ``+ lambda_cls CE(head(m))
    + lambda_al ||m - sg(u_y)||^2 + lambda_aux CE(aux_text(u_y))``. Returns ``(loss, parts)``
    (both backends end with this)."""
    cfg = model.config
    l_cls = F.cross_entropy(F.linear(m, model.head.weight, model.head.bias), labels)
    l_al = F.mse_loss(m, target)
    l_aux = F.cross_entropy(F.linear(u_y, model.aux_text.weight, model.aux_text.bias), labels)
    loss = weighted_sum(l_diff, (cfg.lambda_cls, l_cls), (cfg.lambda_al, l_al), (cfg.lambda_aux, l_aux))
    parts = {"diffusion": l_diff.detach(), "cls": l_cls.detach(), "align": l_al.detach(), "aux": l_aux.detach()}
    return loss, parts
