"""Stage-2 training unroll as phases (``kernels/unroll_phases.py``) under each activation policy,
against its eager twin; the scalar is ``<m, g>``, differentiated in ``z`` and the translator's and
PFIN's weights (the row-block kernels of the same unroll: ``bench_translator_unroll.py``)."""
import pytest

from _op_bench import CASES, MODES, PIECES, model_for, run_op, unroll_case


@pytest.mark.parametrize("policy", ["save", "recompute"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PIECES)
@pytest.mark.parametrize("preset,dtype,batch", CASES)
def test_unroll_phases(benchmark, device, nvml, provider, mode, preset, dtype, batch, policy):
    if provider == "eager" and policy != "save":
        pytest.skip("the eager twin has no activation policy: timed once")
    model = model_for(preset, dtype, device, stage=2)
    model.fused_impl, model.activation_memory = "phases", policy
    forward, inputs = unroll_case(model, provider, batch, device, dtype)
    run_op(benchmark, nvml, f"unroll_phases_{policy}", provider, mode, preset, dtype, batch, forward, inputs)
