"""A checkpoint written by an earlier seda_fast still loads (``strict`` state_dict: same keys,
shapes and dtypes) and predicts what it predicted then. ``tests/data/checkpoint_v0_1_tiny.pt``
was written by seda_fast 0.1.0 (the tiny preset, centers set by one stage-1 batch) with its
probe input and the eager backend's outputs."""
from pathlib import Path

import torch

import seda_fast as sf

DATA = Path(__file__).resolve().parents[1] / "data" / "checkpoint_v0_1_tiny.pt"


def test_checkpoint_written_by_v0_1_loads_and_predicts_the_same():
    ckpt = torch.load(DATA, map_location="cpu", weights_only=True)
    model = sf.SeDA(sf.SeDAConfig(**ckpt["config"]), backend="eager")
    model.load_state_dict(ckpt["model"], strict=True)
    assert model.centers_initialized.all() and model.centers.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        logits, s, m = model.infer(ckpt["probe"])
    for got, want in ((logits, ckpt["logits"]), (s, ckpt["s"]), (m, ckpt["m"])):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
