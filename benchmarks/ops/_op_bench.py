"""Per-op micro-benchmarks, in the manner of Liger-Kernel's: each fused training op against its
eager twin, for ``forward``, ``backward`` (the backward alone, of one recorded forward) and
``full`` (forward + backward), with the same timing, memory and NVML fields as the model-level
suites (:func:`_common.run_benchmark`). Both twins are the backends' loss pieces
(:class:`seda_fast.reference.EagerPieces` and :class:`seda_fast.backends.FusedPieces`), so
an op is timed exactly as the losses call it. A regression in one op shows as that op."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import CUDA, run_benchmark  # noqa: E402
import seda_fast as sf  # noqa: E402
from seda_fast import backends, presets  # noqa: E402
from seda_fast.ops.runtime import interpreter_enabled  # noqa: E402

PIECES = {"eager": backends.EAGER.pieces, "triton": backends.TRITON.pieces}
MODES = ("forward", "backward", "full")
# (preset, dtype, batch): the default model at the training batches on a GPU, the tiny one on CPU
CASES = ([pytest.param("default", dt, b, id=f"default-{dt}-B{b}") for dt in ("bfloat16",) for b in (256, 4096)]
         if CUDA else [pytest.param("tiny", "float32", 5, id="tiny-float32-B5")])


def model_for(preset: str, dtype: str, device, stage: int = 1):
    """A seeded model of ``preset`` in ``dtype`` with its centers set (one stage-1 batch)."""
    torch.manual_seed(0)
    model = sf.SeDA(presets.config(preset), backend="eager").to(device).train()
    cfg = model.config
    v = torch.randn(16, cfg.visual_dim, device=device)
    model.learner_loss(v, torch.arange(16, device=device) % cfg.num_classes)
    return model.to(getattr(torch, dtype)).set_stage(stage)


def diffusion_inputs(cfg, batch: int, dtype: str, device):
    """``(x0, eps, t, e_t, cond, g)`` for a random-t diffusion term: ``x0``, ``eps [B, d]``, steps ``t [B]``,
    ``e_t``, ``cond [B, H]`` (requiring grad), in ``dtype``; ``g`` the seeded generator, for more draws."""
    dt = getattr(torch, dtype)
    g = torch.Generator(device).manual_seed(1)
    x0, eps = (torch.randn(batch, cfg.dim, device=device, generator=g).to(dt) for _ in range(2))
    t = torch.randint(1, cfg.diffusion_steps + 1, (batch,), device=device, generator=g)
    e_t, cond = (torch.randn(batch, cfg.hidden, device=device, generator=g).to(dt).requires_grad_()
                 for _ in range(2))
    return x0, eps, t, e_t, cond, g


def stage1_term(model, provider: str, batch: int, dtype: str, device):
    """``(forward, inputs)`` for :func:`run_op`: stage 1's random-t diffusion term through
    ``PIECES[provider]`` on ``model``'s Learner (its ``fused_impl`` picks the fused op), the scalar
    the loss plus ``<a, g>`` for a fixed random ``g`` (the center constraint reads ``a``),
    differentiated in ``e_t``, ``cond`` and the denoiser's weights."""
    cfg, den = model.config, model.learner
    x0, eps, t, e_t, cond, g = diffusion_inputs(cfg, batch, dtype, device)
    ga = 0.1 * torch.randn(batch, cfg.hidden, device=device, generator=g).to(getattr(torch, dtype))

    def forward():
        loss, a = PIECES[provider].diffusion_term(model, den, x0, eps, t, e_t, cond, cfg.diffusion_steps)
        return loss + (a.float() * ga.float()).sum()
    return forward, [e_t, cond, den.in_x.weight, *[p for layer in den.hidden for p in layer.parameters()],
                     den.out.weight, den.out.bias]


def run_op(benchmark, nvml, op: str, provider: str, mode: str, preset: str, dtype: str, batch: int,
           forward, inputs) -> None:
    """Time ``mode`` of ``forward()`` (a scalar, differentiable in ``inputs``) for ``provider``."""
    if provider == "triton" and not (CUDA or interpreter_enabled()):
        pytest.skip("fused ops need CUDA or TRITON_INTERPRET=1")
    if mode == "forward":
        def fn():
            with torch.no_grad():
                return forward()
    elif mode == "backward":
        loss = forward()

        def fn():
            return torch.autograd.grad(loss, inputs, retain_graph=True)
    else:
        def fn():
            return torch.autograd.grad(forward(), inputs)
    out = fn()
    assert all(torch.isfinite(o).all() for o in (out if isinstance(out, tuple) else (out,)))
    info = {"kind": f"op:{op}:{mode}", "provider": provider, "config": preset, "dtype": dtype, "batch": batch}
    run_benchmark(benchmark, fn, nvml, batch, info)


def unroll_case(model, provider: str, batch: int, device, dtype: str):
    """``(forward, inputs)`` of the stage-2 unroll as the loss calls it: ``<m, g>`` from the
    model's ``s``-conditioned loop, differentiable in ``z`` and the translator's and PFIN's weights."""
    from seda_fast import reference
    cfg = model.config
    dt = getattr(torch, dtype)
    g = torch.Generator(device).manual_seed(1)
    s, xi = (torch.randn(batch, cfg.dim, device=device, generator=g).to(dt) for _ in range(2))
    z = torch.randn(batch, cfg.dim, device=device, generator=g).to(dt).requires_grad_()
    gm = torch.randn(batch, cfg.dim, device=device, generator=g).to(dt)
    params = [p for m in (model.translator, model.pfin) for p in m.parameters() if p.requires_grad]

    def forward():
        cond = reference.condition_term(model.translator, s)
        m = PIECES[provider].unroll(model, s, z, xi, cond)
        return (m.float() * gm.float()).sum()
    return forward, [z, *params]
