"""Center constraint ``CE(-||r - mu||^2 / tau, y)`` (``kernels/center_loss.py``) against its eager twin."""
import pytest
import torch

from _op_bench import CASES, MODES, PIECES, model_for, run_op


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PIECES)
@pytest.mark.parametrize("preset,dtype,batch", CASES)
def test_center_loss(benchmark, device, nvml, provider, mode, preset, dtype, batch):
    model = model_for(preset, dtype, device)
    cfg = model.config
    g = torch.Generator(device).manual_seed(1)
    r = torch.randn(batch, cfg.dim, device=device, generator=g).to(getattr(torch, dtype)).requires_grad_()
    labels = torch.randint(0, cfg.num_classes, (batch,), device=device, generator=g)
    centers = model.centers.to(r.dtype)
    run_op(benchmark, nvml, "center_loss", provider, mode, preset, dtype, batch,
           lambda: PIECES[provider].center_loss(r, centers, labels, cfg.center_temperature), [r])
