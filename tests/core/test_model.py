"""Eager reference and module behaviour against docs/math.md."""
import math

import pytest
import torch
import torch.nn.functional as F

import seda_fast as sf
from seda_fast import reference, schedule

from helpers import make_batch, make_model, small_config


def test_time_embedding_formula():
    t = torch.tensor([0, 3, 999])
    emb = reference.sinusoidal_embedding(t, 6, torch.float64)
    w = [math.exp(-math.log(10000.0) * j / 3) for j in range(3)]
    expect = [[math.sin(tt * wj) for wj in w] + [math.cos(tt * wj) for wj in w] for tt in t.tolist()]
    torch.testing.assert_close(emb, torch.tensor(expect, dtype=torch.float64), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layers", [1, 3])
def test_denoiser_matches_spec_written_out(layers):
    model = make_model(layers=layers)
    den, cfg = model.learner, model.config
    x, c = torch.randn(5, cfg.dim), torch.randn(5, cfg.dim)
    t = torch.tensor([1, 10, 100, 500, 1000])
    e = reference.time_features(den, t, cfg.dim, torch.float32)
    x0_hat, a = reference.denoise(den, x, e, reference.condition_term(den, c))
    a_ref = x @ den.in_x.weight.t() + c @ den.in_c.weight.t() + e + den.in_c.bias
    h = F.silu(a_ref)
    for lin in den.hidden:
        h = h + F.silu(h @ lin.weight.t() + lin.bias)
    torch.testing.assert_close(a, a_ref)
    torch.testing.assert_close(x0_hat, h @ den.out.weight.t() + den.out.bias)


def test_learner_with_one_step_returns_the_denoisers_x0_hat():
    """K = 1: a_1 = 0, b_1 = 1, so s is exactly x0_hat of the start point."""
    model = make_model(learner_steps=1)
    cfg, den = model.config, model.learner
    z = torch.randn(6, cfg.dim)
    c0, _ = schedule.start_coefficients(cfg.diffusion_steps)
    e = reference.time_features(den, torch.tensor([cfg.diffusion_steps]), cfg.dim, torch.float32)
    x0_hat, _ = reference.denoise(den, c0 * z, e[0], reference.condition_term(den, z))
    torch.testing.assert_close(reference.learner_sample(model, z), x0_hat, rtol=0, atol=0)


def test_center_ema_first_batch_sets_then_moves():
    model = make_model(num_classes=3, center_momentum=0.75)
    z1 = torch.randn(4, model.config.dim)
    y1 = torch.tensor([0, 0, 2, 2])
    reference.update_centers(model, z1, y1)
    torch.testing.assert_close(model.centers[0], z1[:2].mean(0))
    torch.testing.assert_close(model.centers[2], z1[2:].mean(0))
    assert model.centers[1].abs().sum() == 0
    assert model.centers_initialized.tolist() == [True, False, True]
    z2 = torch.randn(3, model.config.dim)
    y2 = torch.tensor([0, 1, 1])
    before = model.centers.clone()
    reference.update_centers(model, z2, y2)
    torch.testing.assert_close(model.centers[0], 0.75 * before[0] + 0.25 * z2[0])
    torch.testing.assert_close(model.centers[1], z2[1:].mean(0))  # first batch of class 1
    torch.testing.assert_close(model.centers[2], before[2])  # absent: untouched
    assert model.centers_initialized.all()


def test_learner_loss_updates_centers_only_in_training_mode():
    model = make_model()
    v, y, _ = make_batch(model.config, 9)
    model.eval()
    model.learner_loss(v, y)
    assert not model.centers_initialized.any()
    model.train()
    model.learner_loss(v, y)
    assert model.centers_initialized[y].all()


def test_center_logits_are_negative_squared_distances():
    r, mu = torch.randn(5, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    expect = -((r[:, None] - mu[None]) ** 2).sum(-1) / 2.5
    torch.testing.assert_close(reference.center_logits(r, mu, 2.5), expect)


def test_same_generator_state_gives_same_losses():
    model = make_model()
    v, y, text = make_batch(model.config, 11)
    model.eval()  # no center update between the two calls
    reference.update_centers(model, torch.randn(11, model.config.dim), y)
    l1 = model.learner_loss(v, y, torch.Generator().manual_seed(5))
    l2 = model.learner_loss(v, y, torch.Generator().manual_seed(5))
    l3 = model.learner_loss(v, y, torch.Generator().manual_seed(6))
    assert l1.item() == l2.item() and l1.item() != l3.item()
    model.set_stage(2)
    a = model(v, y, text, generator=torch.Generator().manual_seed(5))
    b = model(v, y, text, generator=torch.Generator().manual_seed(5))
    assert a.item() == b.item() and torch.isfinite(a)


def test_losses_decrease_on_a_small_synthetic_problem():
    torch.manual_seed(0)
    cfg = small_config(num_classes=3, learner_steps=2, translator_steps=2)
    model = sf.SeDA(cfg)
    protos = torch.randn(3, cfg.visual_dim) * 3
    y = torch.arange(48) % 3
    v = protos[y] + 0.3 * torch.randn(48, cfg.visual_dim)
    text = torch.randn(3, cfg.text_dim)
    g = torch.Generator().manual_seed(0)
    for stage in (1, 2):
        model.set_stage(stage)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
        losses = []
        for _ in range(40):
            loss = model(v, y, text, generator=g)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert all(math.isfinite(x) for x in losses)
        assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, (stage, losses[:5], losses[-5:])
    model.eval()
    assert (model(v).argmax(1) == y).float().mean() > 0.9


def test_inference_is_deterministic_and_batch_independent():
    model = make_model().eval()
    v, _, _ = make_batch(model.config, 13)
    with torch.no_grad():
        full = model(v)
        again = model(v)
        parts = torch.cat([model(v[:1]), model(v[1:6]), model(v[6:])])
        shuffled = model(v.flip(0)).flip(0)
    assert torch.equal(full, again)
    torch.testing.assert_close(parts, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(shuffled, full, rtol=1e-5, atol=1e-6)


def test_explicit_zero_noise_equals_default():
    model = make_model().eval()
    v, _, _ = make_batch(model.config, 4)
    with torch.no_grad():
        torch.testing.assert_close(model(v, noise=torch.zeros(4, model.config.dim)), model(v))
        assert not torch.equal(model(v, noise=torch.randn(4, model.config.dim)), model(v))


def test_set_stage_freezes_what_the_spec_says():
    model = make_model()
    stage1 = {"visual_proj", "learner", "readout", "aux_visual"}
    for stage, trained in ((1, stage1), (2, {"text_proj", "translator", "pfin", "head", "aux_text"})):
        model.set_stage(stage)
        assert model.stage == stage
        for name, p in model.named_parameters():
            assert p.requires_grad == (name.split(".")[0] in trained), name
    with pytest.raises(ValueError, match="stage"):
        model.set_stage(3)


@pytest.mark.parametrize("stage", [1, 2])
def test_every_trainable_parameter_gets_a_gradient(stage):
    """DDP needs every requires_grad parameter to receive a gradient each step."""
    model = make_model().set_stage(stage)
    v, y, text = make_batch(model.config, 10)
    model(v, y, text).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_per_sample_text_and_text_kind():
    model = make_model(num_classes=4).set_stage(2)
    v, y, _ = make_batch(model.config, 4)
    per_sample = torch.randn(4, model.config.text_dim)
    g = lambda: torch.Generator().manual_seed(1)
    as_class = model(v, y, per_sample, generator=g())  # [C, Dt] read as class texts under "auto"
    as_sample = model(v, y, per_sample, generator=g(), text_kind="sample")
    by_hand = model(v, y, per_sample[y], generator=g(), text_kind="sample")
    torch.testing.assert_close(as_class, by_hand)
    assert torch.isfinite(as_sample)


def test_state_dict_round_trip_and_backend_independence():
    model = make_model().eval()
    v, y, _ = make_batch(model.config, 7)
    model.train()
    model.learner_loss(v, y)  # give the centers a value
    model.eval()
    clone = sf.SeDA(model.config, backend="eager")
    missing = clone.load_state_dict(model.state_dict())
    assert not missing.missing_keys and not missing.unexpected_keys
    assert torch.equal(clone.centers, model.centers)
    with torch.no_grad():
        assert torch.equal(clone(v), model(v))
    keys = set(model.state_dict())
    model.backend = "triton"
    assert set(model.state_dict()) == keys


def test_half_precision_eager_runs():
    model = make_model(dtype=torch.bfloat16).eval()
    v, _, _ = make_batch(model.config, 5)
    with torch.no_grad():
        out = model(v)  # float32 input is cast to the parameters' dtype
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_a_non_finite_row_leaves_the_centers_of_other_rows_alone(backend):
    """One NaN row in ``visual`` (check_inputs off) during a stage-1 training step: every other
    class's center is what the batch without that row gives, the class whose only row it was keeps
    its previous center, a class with other finite rows moves toward their mean, and the next clean
    batch trains normally. Both backends (fused kernels under the interpreter, 1-2 program grids)."""
    model = make_model(learner_steps=2, layers=2)
    model.backend = backend
    model.train()
    C = model.config.num_classes
    g = torch.Generator().manual_seed(11)
    first = torch.randn(2 * C, model.config.visual_dim, generator=g)
    model.learner_loss(first, torch.arange(C).repeat(2), generator=g)   # every class has a center
    before = model.centers.clone()
    visual, labels, _ = make_batch(model.config, 13, seed=12)
    labels[:3] = torch.tensor([2, 4, 4])
    labels[3:] = torch.tensor([0, 1, 3, 5, 6, 0, 1, 3, 5, 6])             # class 2: row 0 only; class 4: rows 1, 2
    visual[0, 5] = float("nan")
    visual[1, 0] = float("nan")
    clean = make_model(learner_steps=2, layers=2)
    clean.load_state_dict(model.state_dict())
    clean.backend = backend
    clean.learner_loss(visual[2:], labels[2:], generator=torch.Generator().manual_seed(1))
    loss = model.learner_loss(visual, labels, generator=torch.Generator().manual_seed(1))
    assert torch.isnan(loss)                                              # the user sees the bad batch
    assert torch.isfinite(model.centers).all()
    assert torch.equal(model.centers[2], before[2])                       # its only row was NaN
    assert not torch.allclose(model.centers[4], before[4])                # its finite row counts
    # z of the other rows is recomputed on an 11-row batch, so allow rounding of the projector's matmul
    torch.testing.assert_close(model.centers, clean.centers, rtol=1e-6, atol=1e-6)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    opt.zero_grad()
    v2, y2, _ = make_batch(model.config, 9, seed=13)
    loss = model.learner_loss(v2, y2, generator=torch.Generator().manual_seed(2))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    opt.step()
    assert torch.isfinite(model.centers).all()


def test_embedding_table_rows_are_the_embedding():
    """The cached table's row t is ``emb(t)`` bit for bit, in each dtype."""
    t = torch.tensor([0, 1, 17, 500, 1000])
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        assert torch.equal(reference.embedding_table(1000, 10, dtype, "cpu")[t],
                           reference.sinusoidal_embedding(t, 10, dtype))


@pytest.mark.parametrize("K", [1, 4])
def test_fused_translator_tables_match_the_eager_pieces(K):
    """The fused glue's one time MLP over the random steps and the unroll's steps gives the eager
    pieces' two, values and gradients (it only batches the rows)."""
    from seda_fast.backends import TRITON
    model = make_model(translator_steps=K)
    model.set_stage(2)  # the Translator trains
    cfg, den = model.config, model.translator
    t = torch.randint(1, cfg.diffusion_steps + 1, (7,))
    out = {}
    for name, pieces in (("eager", reference.EAGER), ("fused", TRITON.pieces)):
        den.zero_grad()
        e_t, (ddim, e_table) = pieces.translator_tables(den, t, cfg.diffusion_steps, K, cfg.dim, torch.float32)
        (e_t.square().sum() + e_table.sin().sum()).backward()
        out[name] = [e_t, ddim, e_table] + [p.grad.clone() for p in (den.time_in.weight, den.time_in.bias,
                                                                      den.time_out.weight, den.time_out.bias)]
    for a, b in zip(out["eager"], out["fused"]):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    assert out["fused"][0].shape == (7, cfg.hidden) and out["fused"][2].shape == (K, cfg.hidden)
