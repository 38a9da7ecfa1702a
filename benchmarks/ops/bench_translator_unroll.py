"""Stage-2 training unroll, the K2-step Translator + PFIN loop, on row blocks
(``kernels/translator_unroll.py``), against its eager twin; the scalar is ``<m, g>``,
differentiated in ``z`` and the translator's and PFIN's weights."""
import pytest

from _op_bench import CASES, MODES, PIECES, model_for, run_op, unroll_case


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PIECES)
@pytest.mark.parametrize("preset,dtype,batch", CASES)
def test_translator_unroll(benchmark, device, nvml, provider, mode, preset, dtype, batch):
    model = model_for(preset, dtype, device, stage=2)
    model.fused_impl = "rowblock"  # the row-block kernels (bench_unroll_phases.py: the phase kernels)
    forward, inputs = unroll_case(model, provider, batch, device, dtype)
    run_op(benchmark, nvml, "translator_unroll", provider, mode, preset, dtype, batch, forward, inputs)
