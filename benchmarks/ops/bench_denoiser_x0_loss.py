"""Forward noising + denoiser + x0 loss (``kernels/denoiser_x0_loss.py``), the random-t diffusion
term of both stages, against its eager twin; the scalar is the loss plus ``<a, g>`` (stage 1's
center constraint reads ``a``), differentiated in ``e_t``, ``cond`` and the denoiser's weights."""
import pytest
import torch

from _op_bench import CASES, MODES, PIECES, diffusion_inputs, model_for, run_op


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PIECES)
@pytest.mark.parametrize("preset,dtype,batch", CASES)
def test_denoiser_x0_loss(benchmark, device, nvml, provider, mode, preset, dtype, batch):
    model = model_for(preset, dtype, device)
    cfg, den = model.config, model.learner
    x0, eps, t, e_t, cond, g = diffusion_inputs(cfg, batch, dtype, device)
    ga = 0.1 * torch.randn(batch, cfg.hidden, device=device, generator=g).to(getattr(torch, dtype))

    def forward():
        loss, a = PIECES[provider].diffusion_term(den, x0, eps, t, e_t, cond, cfg.diffusion_steps)
        return loss + (a.float() * ga.float()).sum()
    run_op(benchmark, nvml, "denoiser_x0_loss", provider, mode, preset, dtype, batch, forward,
           [e_t, cond, den.in_x.weight, *[p for layer in den.hidden for p in layer.parameters()], den.out.weight,
            den.out.bias])
