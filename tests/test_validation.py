"""Bad input raises ValueError/TypeError naming the argument, before any computation."""
import pytest
import torch

import seda_fast as sf

from helpers import make_batch, make_model


@pytest.mark.parametrize("field,value,exc", [
    ("visual_dim", 0, ValueError), ("dim", 47, ValueError), ("hidden", 2.5, TypeError),
    ("layers", 0, ValueError), ("learner_steps", 2000, ValueError), ("num_classes", True, TypeError),
    ("center_momentum", 1.5, ValueError), ("center_temperature", 0.0, ValueError),
    ("lambda_sc", float("nan"), ValueError), ("lambda_al", -1.0, ValueError), ("dim", 10**9, ValueError),
])
def test_bad_config(field, value, exc):
    kwargs = dict(visual_dim=8, text_dim=8, num_classes=3)
    kwargs[field] = value
    with pytest.raises(exc, match=field):
        sf.SeDAConfig(**kwargs)


def test_config_dict_round_trip_and_unknown_field():
    cfg = sf.SeDAConfig(visual_dim=8, text_dim=6, num_classes=3, dim=16)
    assert sf.SeDAConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        sf.SeDAConfig.from_dict({**cfg.to_dict(), "dimm": 3})


def test_bad_model_arguments():
    cfg = sf.SeDAConfig(visual_dim=8, text_dim=6, num_classes=3, dim=16, hidden=16)
    with pytest.raises(TypeError, match="config"):
        sf.SeDA({"visual_dim": 8})
    with pytest.raises(ValueError, match="backend"):
        sf.SeDA(cfg, backend="cuda")
    model = sf.SeDA(cfg)
    with pytest.raises(ValueError, match="backend"):
        model.backend = "fast"


@pytest.fixture
def model():
    return make_model()


@pytest.mark.parametrize("visual,exc,match", [
    ([[0.0] * 37], TypeError, "visual must be a torch.Tensor"),
    (torch.randn(37), ValueError, r"visual must have shape \[B, 37\]"),
    (torch.randn(4, 36), ValueError, r"visual must have shape \[B, 37\]"),
    (torch.randn(2, 4, 37), ValueError, "visual must have shape"),
    (torch.randint(0, 3, (4, 37)), TypeError, "visual must be float"),
    (torch.randn(0, 37), ValueError, "visual is an empty batch"),
])
def test_bad_visual(model, visual, exc, match):
    with pytest.raises(exc, match=match):
        model(visual)
    with pytest.raises(exc, match=match):
        model.learner_loss(visual, torch.zeros(4, dtype=torch.long))


def test_bad_labels(model):
    v, y, text = make_batch(model.config, 5)
    with pytest.raises(TypeError, match="labels must be an integer"):
        model(v, y.float())
    with pytest.raises(ValueError, match=r"labels must have shape \[5\]"):
        model(v, y[:4])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 7\)"):
        model(v, torch.tensor([0, 1, 2, 3, 7]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 7\)"):
        model(v, torch.tensor([0, -1, 2, 3, 4]))
    with pytest.raises(TypeError, match="labels must be a torch.Tensor"):
        model(v, [0, 1, 2, 3, 4])


def test_bad_text_and_noise(model):
    v, y, text = make_batch(model.config, 5)
    model.set_stage(2)
    with pytest.raises(ValueError, match="needs text"):
        model(v, y)
    with pytest.raises(ValueError, match=r"text must have shape \[5, 21\]"):
        model(v, y, torch.randn(6, 21))
    with pytest.raises(ValueError, match=r"text must have shape \[7, 21\]"):
        model(v, y, torch.randn(7, 20), text_kind="class")
    with pytest.raises(ValueError, match="text_kind"):
        model(v, y, text, text_kind="per-class")
    with pytest.raises(ValueError, match=r"noise must have shape \[5, 48\]"):
        model(v, noise=torch.randn(5, 47))


def test_nan_and_inf_reported_in_check_inputs_mode(model):
    v, y, text = make_batch(model.config, 5)
    v[2, 3] = float("nan")
    out = model(v)  # value checks are off by default (they cost a device sync)
    assert torch.isnan(out).any()
    model.check_inputs = True
    with pytest.raises(ValueError, match="visual contains 1 NaN/Inf"):
        model(v)
    v2 = make_batch(model.config, 5)[0]
    text[0, 0] = float("inf")
    model.set_stage(2)
    with pytest.raises(ValueError, match="text contains 1 NaN/Inf"):
        model(v2, y, text)
    with pytest.raises(ValueError, match="noise contains"):
        model(v2, noise=torch.full((5, 48), float("nan")))


def test_mismatched_devices_are_named(model):
    meta = torch.empty(5, 37, device="meta")
    with pytest.raises(ValueError, match="visual is on meta but the model is on cpu"):
        model(meta)


def test_triton_backend_on_cpu_without_interpreter_is_a_clear_error(model, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    model.backend = "triton"
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        model(make_batch(model.config, 2)[0])
    model.backend = "auto"
    assert model.resolved_backend(torch.device("cpu")) == "eager"
