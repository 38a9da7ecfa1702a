"""Stage 2's random-t diffusion term with the denoiser as phases (``kernels/denoise_phases.py``) against
its eager twin: the loss alone (stage 2 reads nothing else of the term), differentiated in ``e_t``,
``cond`` and the Translator denoiser's weights."""
import pytest

from _op_bench import CASES, MODES, PIECES, diffusion_inputs, model_for, run_op


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PIECES)
@pytest.mark.parametrize("preset,dtype,batch", CASES)
def test_denoise_phases(benchmark, device, nvml, provider, mode, preset, dtype, batch):
    model = model_for(preset, dtype, device, stage=2)
    cfg, den = model.config, model.translator
    x0, eps, t, e_t, cond, _ = diffusion_inputs(cfg, batch, dtype, device)

    def forward():
        return PIECES[provider].diffusion_loss(model, den, x0, eps, t, e_t, cond, cfg.diffusion_steps)
    run_op(benchmark, nvml, "denoise_phases", provider, mode, preset, dtype, batch, forward,
           [e_t, cond, den.in_x.weight, *[p for layer in den.hidden for p in layer.parameters()], den.out.weight,
            den.out.bias])
