"""The Learner's K1-step sampler (``kernels/semantic_sampler.py``: projector, LayerNorm and the DDIM
loop in one launch) against its eager twin. Inference only: forward."""
import pytest
import torch

from _op_bench import CASES, PIECES, model_for, run_op
from seda_fast import reference


@pytest.mark.parametrize("provider", PIECES)
@pytest.mark.parametrize("preset,dtype,batch", CASES)
def test_semantic_sampler(benchmark, device, nvml, provider, preset, dtype, batch):
    model = model_for(preset, dtype, device, stage=2).eval()
    g = torch.Generator(device).manual_seed(1)
    v = torch.randn(batch, model.config.visual_dim, device=device, generator=g).to(getattr(torch, dtype))

    def forward():
        z = reference.project(model.visual_proj, v)
        return PIECES[provider].semantic(model, v, z).float().sum()
    run_op(benchmark, nvml, "semantic_sampler", provider, "forward", preset, dtype, batch, forward, [])
