"""Training step (forward + backward + AdamW step) per stage: eager, torch.compile of the eager
model, and the fused Triton training kernels (``backend="triton"``); bf16 autocast on the GPU."""
import pytest
import torch

import seda_fast as sf

from _common import CONFIGS, TRAIN_CASES, run_benchmark

TRAIN_PROVIDERS = ("eager", "compile_default", "triton")


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("provider", TRAIN_PROVIDERS)
@pytest.mark.parametrize("config,dtype,batch", TRAIN_CASES)
def test_training_step(benchmark, device, nvml, provider, stage, config, dtype, batch):
    torch.manual_seed(0)
    model = sf.SeDA(sf.SeDAConfig(**CONFIGS[config]), backend="triton" if provider == "triton" else "eager")
    model = model.to(device)
    cfg = model.config
    visual = torch.randn(batch, cfg.visual_dim, device=device)
    labels = torch.randint(0, cfg.num_classes, (batch,), device=device)
    text = torch.randn(cfg.num_classes, cfg.text_dim, device=device)
    model.train()
    model.learner_loss(visual, labels)  # centers initialised (a stage-1 step), then the timed stage
    model.set_stage(stage)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    step_model = torch.compile(model) if provider == "compile_default" else model
    amp = torch.autocast(device.type, dtype=getattr(torch, dtype), enabled=dtype != "float32")

    def step():
        with amp:
            loss = step_model(visual, labels, text)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    info = {"kind": f"training_stage{stage}", "provider": provider, "config": config, "dtype": dtype,
            "batch": batch}
    loss = step()
    assert torch.isfinite(loss)
    run_benchmark(benchmark, step, nvml, batch, info)
