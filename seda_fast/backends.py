"""The backend contract: what :class:`seda_fast.SeDA` asks of the code that runs its math.

A backend is an object with the :class:`Backend` protocol: a ``name``, whether it can run on a
device (``available``/``require``), the two inference entry points (``semantic``, ``infer``) and the
training ``pieces`` that :func:`seda_fast.reference.learner_loss` / ``translator_loss`` take. The
losses are written once, in the reference; a backend supplies only its heavy pieces, so both
backends draw the same random numbers in the same order by construction.

* :data:`EAGER`: :mod:`seda_fast.reference` in plain torch ops (autograd records everything).
* :data:`TRITON`: the fused custom ops of :mod:`seda_fast.ops`.
"""
from __future__ import annotations

from typing import Protocol

import torch

from . import reference, schedule
from .ops import center_loss, center_update, denoise_phases, denoiser_x0_loss, infer_phases, runtime
from .ops import semantic_sampler, translator_pfin, translator_unroll, unroll_phases

# The fused inference implementations (``SeDA.fused_impl``), all over the same math:
# "rowblock": a program owns a row block and runs a whole sampling loop (2 launches);
# "phases": the chain as a fixed schedule of phases, one GEMM over all rows each, one launch per phase
#   (one CUDA-graph replay per call on CUDA); "persistent": the same phases in one cooperative launch
#   with grid barriers (CUDA only).
FUSED_IMPLS = ("rowblock", "phases", "persistent")
# What "auto" runs: the implementation the cost model predicts fastest (or within 5 %) at every batch
# size it checks (B = 1, 64, 1024, 16384, in bf16, fp16 and fp32; tests/tools/test_cost_baselines.py
# holds it to that), among those with no unmeasured way to hang: "persistent" spins on a grid
# barrier that no GPU has run yet, so it is opt-in until a GPU run has measured it.
AUTO_IMPL = "phases"
# Training: stage 2's unroll and random-t diffusion term run as row-block kernels ("rowblock") or
# as phases (every other value of ``SeDA.fused_impl``: there is no persistent training kernel). The
# cost model (``python -m seda_fast cost-training``) predicts phases several times faster at
# B = 256 and 4096.
ACTIVATION_POLICIES = unroll_phases.POLICIES


def training_impl(model) -> str:
    """The training implementation (stage 1's diffusion term; stage 2's unroll, diffusion term and ``s``)
    ``model.fused_impl`` selects: ``"rowblock"`` or ``"phases"``."""
    return "rowblock" if model.fused_impl == "rowblock" else "phases"


def activation_policy(model, batch: int, dtype: torch.dtype) -> str:
    """The phase unroll's activation policy for ``batch`` rows in ``dtype``: ``model.activation_memory``
    ``None`` (default) saves every step's activations (the fast policy); ``"save"``/``"recompute"``
    force one; an int is a budget in bytes: save when the saved activations fit in it, else recompute."""
    budget = model.activation_memory
    if budget is None:
        return "save"
    if isinstance(budget, str):
        return budget
    cfg = model.config
    need = unroll_phases.saved_bytes(cfg, batch, dtype, "save")
    return "save" if need <= budget else "recompute"


class Backend(Protocol):
    name: str
    pieces: reference.EagerPieces

    def available(self, device: torch.device) -> bool: ...

    def require(self, device: torch.device) -> None: ...

    def semantic(self, model, visual: torch.Tensor) -> torch.Tensor: ...

    def infer(self, model, visual: torch.Tensor,
              noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


class EagerBackend:
    """The reference: every dtype and device, with autograd."""

    name = "eager"
    pieces = reference.EAGER

    def available(self, device: torch.device) -> bool:
        return True

    def require(self, device: torch.device) -> None:
        return None

    def semantic(self, model, visual):
        return reference.semantic(model, visual)

    def infer(self, model, visual, noise=None):
        return reference.infer(model, visual, noise)


class FusedPieces(reference.EagerPieces):
    """:class:`seda_fast.reference.EagerPieces` with the heavy parts as fused custom ops; the cheap
    ``[B, d]``/``[B, C]`` glue (projectors, time embedding and MLP, heads, cross-entropies, the
    alignment MSE) stays in torch and its autograd, with its constant tables (time embedding,
    noising coefficients) gathered from the device cache and, in stage 2, one time MLP for the
    random steps and the unroll's steps.

    Stage 1: the center EMA (deterministic, all-reduced under torch.distributed), the center
    constraint with a streaming log-sum-exp, and, by :func:`training_impl`, the forward noising +
    Learner denoiser + x0 loss as phases (``seda_fast::denoise_phases``, which also returns the
    ``a`` the constraint reads and takes its gradient) or in one row-block op.
    Stage 2, by :func:`training_impl`: with phases, ``s`` from the phase schedule's prefix (no
    grad), the random-t diffusion term's denoiser as phases and the K2-step Translator + PFIN
    unroll as phase GEMMs over all rows under :func:`activation_policy`; with row blocks, the fused
    Learner sampler, the row-block x0-loss op and the row-block unroll, which keeps only the
    per-step states for its backward."""

    def check(self, model) -> None:
        runtime.check_dtype(model.visual_proj.linear.weight.dtype)

    def update_centers(self, model, z, labels) -> None:
        center_update.update_centers(model.centers, model.centers_initialized, z, labels,
                                     model.config.center_momentum)

    def time_features(self, den, t, dim: int, dtype, T: int):
        return reference.time_mlp(den, reference.embedding_table(T, dim, dtype, t.device)[t])

    def translator_tables(self, den, t, T: int, K: int, dim: int, dtype):
        """One gather of the cached embedding table and one time MLP for the random steps and the
        unroll's steps together (the same values as two, a dozen fewer kernels each way)."""
        tau = schedule.sampling_timesteps_on(T, K, t.device)
        emb = reference.embedding_table(T, dim, dtype, t.device)[torch.cat([t, tau])]
        e_t, e_table = reference.time_mlp(den, emb).split([t.shape[0], K])
        # the unroll saves its e_table for the backward: a copy, so the [B, H] rows are not kept with it
        return e_t, (reference.ddim_table(T, K, dtype, t.device), e_table.clone())

    def diffusion_term(self, model, den, x0, eps, t, e_t, cond, T: int):
        if training_impl(model) == "rowblock":
            return denoiser_x0_loss.denoise_x0_loss(den, x0, eps, t, e_t, cond, T)
        return denoise_phases.denoise_x0_term(den, x0, eps, t, e_t, cond, T)

    def diffusion_loss(self, model, den, x0, eps, t, e_t, cond, T: int):
        if training_impl(model) == "rowblock":
            return self.diffusion_term(model, den, x0, eps, t, e_t, cond, T)[0]
        return denoise_phases.denoise_x0_loss(den, x0, eps, t, e_t, cond, T)

    def center_loss(self, r, centers, labels, temperature: float):
        return center_loss.center_loss(r, centers, labels, temperature)

    def semantic(self, model, visual, z):
        if training_impl(model) == "rowblock":
            return semantic_sampler.semantic_sample(model, visual)[1].to(z.dtype)
        return infer_phases.semantic_phases(model, visual)[1].to(z.dtype)

    def unroll(self, model, s, z, xi, cond, tables=None):
        cfg, den = model.config, model.translator
        T = cfg.diffusion_steps
        ddim, e_table = tables or reference.sampling_tables(den, T, cfg.translator_steps, cfg.dim, s.dtype, s.device)
        args = (den, model.pfin, reference._start(T, s, xi), z, cond, e_table, ddim)
        if training_impl(model) == "rowblock":
            return translator_unroll.translator_unroll(*args)
        dtype = runtime.autocast_dtype(s.device, model.translator.in_x.weight.dtype)
        return unroll_phases.unroll_phases(*args, policy=activation_policy(model, s.shape[0], dtype))


class TritonBackend:
    """The fused Triton kernels: CUDA, or CPU under ``TRITON_INTERPRET=1``; float32/16, bfloat16.
    Inference runs the implementation ``model.fused_impl`` selects (:data:`FUSED_IMPLS`) and carries
    no autograd history; training goes through :class:`FusedPieces`."""

    name = "triton"
    pieces = FusedPieces()

    def available(self, device: torch.device) -> bool:
        return runtime.available(device)

    def require(self, device: torch.device) -> None:
        runtime.require(device)

    def impls(self, device: torch.device) -> tuple[str, ...]:
        """The fused inference implementations that can run on ``device`` ("persistent": CUDA only)."""
        return FUSED_IMPLS if device.type == "cuda" else tuple(i for i in FUSED_IMPLS if i != "persistent")

    def resolve_impl(self, model, device: torch.device) -> str:
        """The implementation ``model.fused_impl`` selects on ``device`` ("auto": :data:`AUTO_IMPL`)."""
        impl = AUTO_IMPL if model.fused_impl == "auto" else model.fused_impl
        if impl not in self.impls(device):
            raise RuntimeError(f"fused_impl={impl!r} needs a CUDA device (it spins on a grid barrier, and under "
                               f"the Triton interpreter programs run one after another); on {device.type} use one "
                               f"of {self.impls(device)}")
        return impl

    def semantic(self, model, visual):
        """``s`` from the Learner sampler's own launch (``"rowblock"``) or the phase schedule's
        prefix that ends with it (``"phases"``, ``"persistent"``)."""
        impl = self.resolve_impl(model, visual.device)
        if impl == "rowblock":
            return semantic_sampler.semantic_sample(model, visual)[1]
        return infer_phases.semantic_phases(model, visual, impl)[1]

    def infer(self, model, visual, noise=None):
        impl = self.resolve_impl(model, visual.device)
        if impl != "rowblock":
            return infer_phases.infer_phases(model, visual, noise, impl)
        z, s = semantic_sampler.semantic_sample(model, visual)
        logits, m = translator_pfin.translator_pfin(model, s, z, noise)
        return logits, s, m


EAGER = EagerBackend()
TRITON = TritonBackend()
BACKENDS = {b.name: b for b in (EAGER, TRITON)}


def fused_impls(device: torch.device | str | None = None) -> tuple[str, ...]:
    """The fused inference implementations (``SeDA.fused_impl`` takes these and ``"auto"``); with a
    ``device``, those that can run there."""
    if device is None:
        return FUSED_IMPLS
    if isinstance(device, bool) or not isinstance(device, (torch.device, str, int)):
        raise TypeError(f"device must be a torch.device, a device string ('cpu', 'cuda:0'), a CUDA ordinal or "
                        f"None, got {type(device).__name__}")
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device must be a device this torch can name, such as 'cpu', 'cuda:0' or a CUDA "
                         f"ordinal, got {device!r} ({exc})") from exc
    return TRITON.impls(device)
