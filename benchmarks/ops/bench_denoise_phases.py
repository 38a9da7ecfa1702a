"""The random-t diffusion term with the denoiser as phases (``kernels/denoise_phases.py``) against its
eager twin, differentiated in ``e_t``, ``cond`` and the denoiser's weights: stage 2's loss alone
(nothing else of the term is read there), and stage 1's loss plus ``<a, g>`` (its center
constraint reads ``a``)."""
import pytest

from _op_bench import CASES, MODES, PIECES, diffusion_inputs, model_for, run_op, stage1_term


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


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PIECES)
@pytest.mark.parametrize("preset,dtype,batch", CASES)
def test_denoise_phases_stage1(benchmark, device, nvml, provider, mode, preset, dtype, batch):
    model = model_for(preset, dtype, device)
    forward, inputs = stage1_term(model, provider, batch, dtype, device)
    run_op(benchmark, nvml, "denoise_phases_stage1", provider, mode, preset, dtype, batch, forward, inputs)
