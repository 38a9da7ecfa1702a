"""Forward noising + denoiser + x0 loss (``kernels/denoiser_x0_loss.py``), the random-t diffusion
term of both stages with ``fused_impl="rowblock"``, against its eager twin at stage 1's use
(``_op_bench.stage1_term``: the loss plus ``<a, g>``, differentiated in ``e_t``, ``cond`` and the
denoiser's weights)."""
import pytest

from _op_bench import CASES, MODES, PIECES, model_for, run_op, stage1_term


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PIECES)
@pytest.mark.parametrize("preset,dtype,batch", CASES)
def test_denoiser_x0_loss(benchmark, device, nvml, provider, mode, preset, dtype, batch):
    model = model_for(preset, dtype, device)
    model.fused_impl = "rowblock"  # this op; the phases' stage-1 term is bench_denoise_phases.py's
    forward, inputs = stage1_term(model, provider, batch, dtype, device)
    run_op(benchmark, nvml, "denoiser_x0_loss", provider, mode, preset, dtype, batch, forward, inputs)
