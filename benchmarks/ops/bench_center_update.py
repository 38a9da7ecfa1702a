"""Center EMA (``kernels/center_update.py``: per-class sums, then the in-place update) against its
eager twin. No gradient: forward only."""
import pytest
import torch

from _op_bench import CASES, PIECES, model_for, run_op


@pytest.mark.parametrize("provider", PIECES)
@pytest.mark.parametrize("preset,dtype,batch", CASES)
def test_center_update(benchmark, device, nvml, provider, preset, dtype, batch):
    model = model_for(preset, "float32", device)  # the centers are an fp32 buffer
    cfg = model.config
    g = torch.Generator(device).manual_seed(1)
    z = torch.randn(batch, cfg.dim, device=device, generator=g)
    labels = torch.randint(0, cfg.num_classes, (batch,), device=device, generator=g)

    def update():
        PIECES[provider].update_centers(model, z, labels)
        return model.centers.sum()
    run_op(benchmark, nvml, "center_update", provider, "forward", preset, dtype, batch, update, [])
