"""Stage-2 training unroll, the K2-step Translator + PFIN loop (``kernels/translator_unroll.py``),
against its eager twin; the scalar is ``<m, g>``, differentiated in ``z`` and the translator's and
PFIN's weights."""
import pytest
import torch

from _op_bench import CASES, MODES, PIECES, model_for, run_op
from seda_fast import reference


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PIECES)
@pytest.mark.parametrize("preset,dtype,batch", CASES)
def test_translator_unroll(benchmark, device, nvml, provider, mode, preset, dtype, batch):
    model = model_for(preset, dtype, device, stage=2)
    model.fused_impl = "rowblock"  # the row-block kernels (bench_unroll_phases.py: the phase kernels)
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
    run_op(benchmark, nvml, "translator_unroll", provider, mode, preset, dtype, batch, forward, [z, *params])
