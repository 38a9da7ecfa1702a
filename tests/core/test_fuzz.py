"""Property-based fuzzing of the public API: every input either works (finite output of the
right shape, equal to the contiguous-input result) or raises a clear ValueError/TypeError."""
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import seda_fast as sf

_SETTINGS = settings(max_examples=200, deadline=None, derandomize=True,
                     suppress_health_check=[HealthCheck.too_slow])

valid_fields = st.fixed_dictionaries({
    "visual_dim": st.integers(1, 20), "text_dim": st.integers(1, 12), "num_classes": st.integers(1, 6),
    "dim": st.integers(1, 12).map(lambda h: 2 * h), "hidden": st.integers(1, 24),
    "layers": st.integers(1, 3), "diffusion_steps": st.integers(5, 30),
    "learner_steps": st.integers(1, 5), "translator_steps": st.integers(1, 5),
    "center_momentum": st.floats(0.0, 1.0), "center_temperature": st.floats(0.1, 3.0),
})
# At most one field set to a value the config must reject.
bad_override = st.one_of(st.just({}), st.just({}), st.sampled_from([
    {"visual_dim": 0}, {"dim": 7}, {"hidden": -3}, {"layers": 0}, {"num_classes": 2.0},
    {"learner_steps": 0}, {"translator_steps": 10**6}, {"center_momentum": float("nan")},
    {"center_temperature": float("inf")}, {"lambda_cls": -0.5}, {"text_dim": "384"},
]))
config_fields = st.builds(lambda base, bad: {**base, **bad}, valid_fields, bad_override)


@_SETTINGS
@given(fields=config_fields, batch=st.integers(0, 5), width_delta=st.sampled_from([0, 0, 0, -1, 1]),
       rank=st.sampled_from([2, 2, 2, 1, 3]), dtype=st.sampled_from([torch.float32, torch.float64,
                                                                        torch.bfloat16, torch.int32]),
       transpose=st.booleans(), label_shift=st.sampled_from([0, 0, 0, 1, -1]))
def test_api_fuzz(fields, batch, width_delta, rank, dtype, transpose, label_shift):
    try:
        cfg = sf.SeDAConfig(**fields)
    except (ValueError, TypeError) as err:
        assert "SeDAConfig." in str(err)
        event("rejected config")
        return
    torch.manual_seed(0)
    model = sf.SeDA(cfg).eval()
    width = cfg.visual_dim + width_delta
    shape = {1: (width,), 2: (batch, width), 3: (batch, 2, width)}[rank]
    base = torch.randn(*reversed(shape)) if transpose and rank == 2 else torch.randn(*shape)
    visual = (base.t() if transpose and rank == 2 else base).to(dtype)
    labels = (torch.arange(max(batch, 0)) % cfg.num_classes) + label_shift
    try:
        with torch.no_grad():
            logits = model(visual)
        loss = model(visual, labels)
    except (ValueError, TypeError) as err:
        msg = str(err)
        assert any(name in msg for name in ("visual", "labels")), msg
        event("rejected input")
        return
    event("ran")
    assert logits.shape == (batch, cfg.num_classes) and torch.isfinite(logits).all()
    assert torch.isfinite(loss)
    with torch.no_grad():  # not bitwise: BLAS takes another code path for a transposed operand
        torch.testing.assert_close(logits, model(visual.contiguous()), rtol=1e-5, atol=1e-6)


def test_expanded_and_strided_inputs_match_contiguous():
    torch.manual_seed(0)
    cfg = sf.SeDAConfig(visual_dim=9, text_dim=5, num_classes=3, dim=8, hidden=12, learner_steps=2,
                        translator_steps=2)
    model = sf.SeDA(cfg).eval()
    row = torch.randn(1, 9)
    expanded = row.expand(4, 9)
    strided = torch.randn(4, 18)[:, ::2]
    with torch.no_grad():
        torch.testing.assert_close(model(expanded), model(expanded.contiguous()))
        torch.testing.assert_close(model(strided), model(strided.contiguous()))
