"""Trainer: both stages learn on a small synthetic problem, checkpoints round-trip, runs are
reproducible bit for bit, bad arguments are rejected with the argument's name."""
import pytest
import torch

import seda_fast as sf
from helpers import standin_capture
from seda_fast.apps import baselines
from seda_fast.apps import trainer as trainer_module
from seda_fast.apps.trainer import Trainer, make_model

CFG = dict(visual_dim=24, text_dim=12, num_classes=4, dim=16, hidden=32, layers=2,
           diffusion_steps=100, learner_steps=3, translator_steps=3)


def config(**overrides) -> sf.SeDAConfig:
    return sf.SeDAConfig(**{**CFG, **overrides})


def problem(n: int = 96, seed: int = 3):
    """Separable classes: ``visual = class mean + noise``; ``(visual [n, 24], labels [n], text [4, 12])``."""
    g = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(CFG["num_classes"], CFG["visual_dim"], generator=g)
    labels = torch.arange(n) % CFG["num_classes"]
    visual = means[labels] + 0.5 * torch.randn(n, CFG["visual_dim"], generator=g)
    text = torch.randn(CFG["num_classes"], CFG["text_dim"], generator=g)
    return visual, labels, text


def trainer(model, **kw):
    args = dict(stage1_epochs=6, stage2_epochs=6, batch_size=32, lr=3e-3, seed=5, progress=False)
    args.update(kw)
    return Trainer(model, **args)


def standin_graphs(monkeypatch) -> list:
    """The trainer's StepGraphs capture with :func:`helpers.standin_capture` (the CPU has no CUDA
    graph); returns the list they are added to."""
    made = []

    def graph_step(model, opt, **kw):
        made.append(sf.StepGraph(model, opt, capture_fn=standin_capture(model, opt), **kw))
        return made[-1]
    monkeypatch.setattr(trainer_module, "StepGraph", graph_step)
    return made


def test_cuda_graph_steps_track_the_direct_steps(monkeypatch):
    """``cuda_graph=True``: each stage's steps go through a StepGraph (2 direct, a capture, then
    replays) and train as the direct trainer does. Not bitwise: StepGraph makes AdamW's lr an fp32
    tensor, whose arithmetic rounds differently from the float lr's (about 1e-7 relative a step)."""
    made = standin_graphs(monkeypatch)
    visual, labels, text = problem()
    runs = [trainer(make_model(config(), seed=0), stage1_epochs=2, stage2_epochs=2, grad_clip=1.0,
                    cuda_graph=graph) for graph in (False, True)]
    for tr in runs:
        tr.fit(visual, labels, text)
    assert [g.stats for g in made] == [{"direct": 2, "captures": 1, "replays": 4}] * 2  # 3 steps an epoch
    assert runs[1].settings()["cuda_graph"] and not runs[0].settings()["cuda_graph"]
    for a, b in zip(runs[0].history, runs[1].history):
        assert a.keys() == b.keys()
        for key in a:
            if key != "seconds":
                assert a[key] == pytest.approx(b[key], rel=1e-5), key
    for (name, a), b in zip(runs[0].model.state_dict().items(), runs[1].model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_a_non_finite_loss_stops_before_the_step_changes_anything():
    """A loss that is not finite raises FloatingPointError naming the stage and epoch, before
    backward: the parameters and AdamW's state are what they were (the direct step checks first)."""
    model = make_model(config(), seed=0)
    tr = trainer(model, stage1_epochs=1, stage2_epochs=0)
    visual, labels, _ = problem(n=32)
    tr.fit(visual, labels)  # stage 1 once: AdamW has state
    with torch.no_grad():
        model.visual_proj.linear.weight[0, 0] = float("inf")  # the next loss is not finite
    before = [p.detach().clone() for p in model.parameters()]
    state = [t.clone() for s in tr.optimizer.state.values() for t in s.values()]
    tr.stage1_epochs = 2
    with pytest.raises(FloatingPointError, match="stage-1 loss became (nan|inf) at epoch 2"):
        tr.fit(visual, labels)
    assert all(torch.equal(a.nan_to_num(), b.nan_to_num()) for a, b in zip(model.parameters(), before))
    assert all(torch.equal(a, b) for a, b in zip([t for s in tr.optimizer.state.values() for t in s.values()], state))


def test_with_cuda_graph_a_non_finite_loss_raises_at_the_read(monkeypatch):
    """With ``cuda_graph`` the loss is checked when the steps' losses are read back: the error says
    that the step's update, and those of the steps after it up to the read, were applied."""
    standin_graphs(monkeypatch)
    monkeypatch.setattr(Trainer, "READ_EVERY", 4)
    model = make_model(config(), seed=0)
    tr = trainer(model, stage1_epochs=1, stage2_epochs=0, cuda_graph=True)
    visual, labels, _ = problem(n=96)  # 3 steps an epoch, read back at the epoch's end
    tr.fit(visual, labels)
    with torch.no_grad():
        model.visual_proj.linear.weight[0, 0] = float("inf")
    tr.stage1_epochs = 2
    with pytest.raises(FloatingPointError, match=r"stage-1 loss became nan at epoch 2;.*cuda_graph: that step's "
                                                 r"update was applied, and those of the 2 steps after it\)"):
        tr.fit(visual, labels)


def test_after_a_failed_capture_the_steps_run_directly_in_both_stages(monkeypatch):
    """A capture that fails raises from ``fit``; fitting again resumes with direct steps, and the
    next stage's StepGraph does not capture either (a failed capture's memory stays reserved)."""
    made = []

    def failing_capture(run, generators):
        raise RuntimeError("operation not permitted when stream is capturing")

    def graph_step(model, opt, **kw):
        made.append(sf.StepGraph(model, opt, capture_fn=failing_capture, **kw))
        return made[-1]
    monkeypatch.setattr(trainer_module, "StepGraph", graph_step)
    tr = trainer(make_model(config(), seed=0), stage1_epochs=2, stage2_epochs=1, cuda_graph=True)
    visual, labels, text = problem()  # 3 steps an epoch: 2 warm-up steps, then the capture fails
    with pytest.raises(RuntimeError, match="could not capture the step"):
        tr.fit(visual, labels, text)
    tr.fit(visual, labels, text)
    assert [r["stage"] for r in tr.history] == [1, 1, 2]
    # (the interrupted epoch runs again from its start: 2 steps, then 3 + 3)
    assert [g.stats for g in made] == [{"direct": 2 + 6, "captures": 0, "replays": 0},
                                       {"direct": 3, "captures": 0, "replays": 0}]
    assert not made[1].captures and "not permitted" in made[1].capture_failure
    tr = trainer(make_model(config(), seed=0), stage1_epochs=1, stage2_epochs=1, cuda_graph=True)
    with pytest.raises(RuntimeError, match="could not capture the step"):
        tr.fit(visual, labels, text)
    tr.cuda_graph = False  # as the error advises: the next stage has no StepGraph to pass the failure to
    tr.fit(visual, labels, text)
    assert [r["stage"] for r in tr.history] == [1, 2] and tr._graph_step is None


def test_the_data_is_checked_once_and_the_steps_read_no_input_back(monkeypatch):
    """``fit`` checks its data (the evaluation set's too) for NaN/Inf once; its steps and the
    per-epoch evaluations skip the model's per-batch input checks (each a host read, which would
    make the host wait for the device every step), and the model's ``check_inputs`` is on again
    after ``fit``."""
    from seda_fast import validation
    checked = []
    real = validation.check_finite
    monkeypatch.setattr(validation, "check_finite",
                        lambda name, x, *dtype: checked.append((name, x.shape[0])) or real(name, x, *dtype))
    visual, labels, text = problem()
    tr = trainer(make_model(config(), seed=0), stage1_epochs=2, stage2_epochs=1)
    tr.fit(visual, labels, text, eval_visual=visual[:10], eval_labels=labels[:10])  # 3 steps an epoch
    assert checked == [("text", 4), ("visual", 96), ("eval_visual", 10)]
    assert len(tr.history) == 3 and tr.model.check_inputs


@pytest.mark.parametrize("bad", ["nan", "fp16 overflow"])
def test_a_bad_evaluation_set_is_refused_before_any_step(bad):
    """NaN/Inf in ``eval_visual`` (or a value the model's dtype cannot hold) is reported under its
    own name before the first step, so no weight moves and no epoch is half counted."""
    visual, labels, text = problem()
    model = make_model(config(), seed=0)
    if bad == "fp16 overflow":
        model = model.half()
    ev = visual[:10].clone()
    ev[4, 2] = float("nan") if bad == "nan" else 1e5  # 1e5 is beyond fp16's 65504
    tr = trainer(model, stage1_epochs=1, stage2_epochs=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="eval_visual (contains 1 NaN|has 1 value.* beyond torch.float16)"):
        tr.fit(visual, labels, text, eval_visual=ev, eval_labels=labels[:10])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert tr.epochs_done == {1: 0, 2: 0} and tr.history == []


def test_losses_read_back_in_groups_give_the_same_history(monkeypatch):
    """The steps' losses are read back every ``READ_EVERY`` steps (one sync for the group): the
    history is bitwise the one read after every step, whether an epoch ends mid-group or not."""
    visual, labels, text = problem()
    histories = []
    for every in (1, 2, 16):  # 3 steps an epoch: groups of 1, of 2 with a remainder, one partial group
        monkeypatch.setattr(Trainer, "READ_EVERY", every)
        tr = trainer(make_model(config(), seed=0), stage1_epochs=2, stage2_epochs=1)
        tr.fit(visual, labels, text)
        histories.append([{k: v for k, v in h.items() if k != "seconds"} for h in tr.history])
    assert histories[0] == histories[1] == histories[2]


def test_losses_finite_and_decreasing_both_stages():
    visual, labels, text = problem()
    tr = trainer(make_model(config(), seed=0))
    history = tr.fit(visual, labels, text, eval_visual=visual, eval_labels=labels)
    for stage in (1, 2):
        losses = [h["loss"] for h in history if h["stage"] == stage]
        assert len(losses) == 6
        assert all(torch.isfinite(torch.tensor(losses)))
        assert losses[-1] < 0.7 * losses[0], (stage, losses)
    assert tr.model.stage == 2
    assert history[-1]["accuracy"] >= 0.7  # chance is 0.25
    assert all("center_accuracy" in h for h in history if h["stage"] == 1)
    assert tr.model.check_inputs


def test_checkpoint_round_trip(tmp_path):
    visual, labels, text = problem()
    tr = trainer(make_model(config(), seed=1), stage2_epochs=2)
    tr.fit(visual, labels, text)
    path = tr.save(tmp_path / "ckpt.pt")

    loaded = Trainer.load(path, progress=False)
    assert loaded.model.stage == 2 and loaded.history == tr.history
    assert loaded.settings() == tr.settings()
    assert torch.equal(loaded.predict(visual), tr.predict(visual))
    for a, b in zip(tr.model.state_dict().values(), loaded.model.state_dict().values()):
        assert torch.equal(a, b)
    assert loaded.optimizer.state_dict()["state"].keys() == tr.optimizer.state_dict()["state"].keys()



@pytest.mark.parametrize("cuda_graph", [False, True])
def test_resume_mid_stage_matches_uninterrupted_run(tmp_path, cuda_graph, monkeypatch):
    """Stop after stage 1 + one stage-2 epoch, save, load into another model, finish: the result is
    bitwise the uninterrupted run (model, optimizer, cosine schedule and generator state restored);
    with ``cuda_graph`` too (the stand-in capture), whose saved lr is a tensor."""
    made = standin_graphs(monkeypatch)
    visual, labels, text = problem()
    full = trainer(make_model(config(), seed=1), stage1_epochs=2, stage2_epochs=3, cuda_graph=cuda_graph)
    full.fit(visual, labels, text)

    part = trainer(make_model(config(), seed=1), stage1_epochs=2, stage2_epochs=3, cuda_graph=cuda_graph)
    part.fit(visual, labels, text, max_epochs=3)
    assert part.epochs_done == {1: 2, 2: 1}
    path = part.save(tmp_path / "mid.pt")
    into = make_model(config(), seed=99)
    resumed = Trainer.load(path, into, progress=False)
    assert resumed.model is into and resumed.model.stage == 2
    resumed.fit(visual, labels, text)
    assert resumed.epochs_done == {1: 2, 2: 3}
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert resumed.settings()["cuda_graph"] == cuda_graph
    assert sum(g.stats["replays"] for g in made) == (20 if cuda_graph else 0)  # full 4 + 7, part 4 + 1, resumed 4


def test_checkpoint_config_mismatch(tmp_path):
    visual, labels, text = problem()
    tr = trainer(make_model(config(), seed=0), stage1_epochs=1, stage2_epochs=0)
    tr.fit(visual, labels)
    path = tr.save(tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match="hidden: model=48 checkpoint=32"):
        Trainer.load(path, make_model(config(hidden=48)), progress=False)
    with pytest.raises(TypeError, match="model"):
        Trainer.load(path, torch.nn.Linear(2, 2), progress=False)


def test_same_seed_bitwise_identical():
    visual, labels, text = problem()
    params = []
    for _ in range(2):
        tr = trainer(make_model(config(), seed=7), stage1_epochs=2, stage2_epochs=2)
        tr.fit(visual, labels, text)
        params.append([p.detach().clone() for p in tr.model.state_dict().values()])
    for a, b in zip(*params):
        assert torch.equal(a, b)
    other = trainer(make_model(config(), seed=7), stage1_epochs=2, stage2_epochs=2, seed=6)
    other.fit(visual, labels, text)
    assert not torch.equal(other.model.head.weight, params[0][list(other.model.state_dict()).index("head.weight")])


def test_fit_and_the_baselines_inside_a_callers_autocast_train_with_fresh_weights():
    """Autocast keeps a weight's cast copy until its outermost region exits; a training loop run
    inside one region would step with the first step's weights. fit and the baselines' loops turn
    that cache off for themselves: inside a region with the cache on they train exactly as inside
    one with it off, and evaluating afterwards in the same region sees the trained weights."""
    visual, labels, text = problem()

    def run(cache: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=cache):
            tr = trainer(make_model(config(), seed=7), stage1_epochs=2, stage2_epochs=2)
            tr.fit(visual, labels, text, eval_visual=visual, eval_labels=labels)
            probe, _ = baselines.train_linear_probe(visual, labels, epochs=5, batch_size=32, lr=3e-2, seed=0,
                                                    progress=False)
            assert torch.is_autocast_cache_enabled() == cache  # (restored after each loop)
            return [*tr.model.state_dict().values(), *probe.state_dict().values()], tr.history, \
                baselines.accuracy(probe, visual, labels)

    cached, uncached = run(True), run(False)
    for a, b in zip(cached[0], uncached[0]):
        assert torch.equal(a, b)
    assert cached[1] == [{**r, "seconds": c["seconds"]} for r, c in zip(uncached[1], cached[1])]
    assert cached[2] == uncached[2] > 0.9


def test_per_sample_text():
    visual, labels, _ = problem(n=40)
    text = torch.randn(40, CFG["text_dim"])
    tr = trainer(make_model(config(), seed=0), stage1_epochs=1, stage2_epochs=1)
    tr.fit(visual, labels, text)
    assert torch.isfinite(torch.tensor(tr.history[-1]["loss"]))


def test_per_sample_text_rows_follow_their_samples():
    """``text_kind="sample"``: each shuffled mini-batch gets its own rows of the per-sample text.
    Per-sample rows equal to ``class_text[labels]`` train exactly like the class texts; changing one
    sample's row changes the result; an N == num_classes dataset is read as per-sample when told."""
    visual, labels, class_text = problem(n=40)
    runs = []
    for text, kind in ((class_text, "class"), (class_text[labels], "sample")):
        tr = trainer(make_model(config(), seed=0), stage1_epochs=1, stage2_epochs=2)
        tr.fit(visual, labels, text, text_kind=kind)
        runs.append(tr.model.state_dict())
    for key in runs[0]:
        torch.testing.assert_close(runs[0][key], runs[1][key], rtol=1e-5, atol=1e-6, msg=key)
    edited = class_text[labels].clone()
    edited[7] += 1.0
    tr = trainer(make_model(config(), seed=0), stage1_epochs=1, stage2_epochs=2)
    tr.fit(visual, labels, edited, text_kind="sample")
    assert not torch.allclose(tr.model.head.weight, runs[0]["head.weight"])

    n = CFG["num_classes"]  # as many samples as classes: "auto" would read class texts
    small = trainer(make_model(config(), seed=0), stage1_epochs=1, stage2_epochs=1, batch_size=2)
    small.fit(visual[:n], labels[:n], torch.randn(n, CFG["text_dim"]), text_kind="sample")
    assert small.epochs_done == {1: 1, 2: 1}
    fresh = trainer(make_model(config(), seed=0), stage1_epochs=1, stage2_epochs=1)
    with pytest.raises(ValueError, match="per-sample text"):  # 4 rows for 40 samples
        fresh.fit(visual, labels, torch.randn(n, CFG["text_dim"]), text_kind="sample")


@pytest.mark.parametrize("kw, exc, name", [
    ({"stage1_epochs": -1}, ValueError, "stage1_epochs"),
    ({"stage2_epochs": 1.5}, TypeError, "stage2_epochs"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"lr": 0.0}, ValueError, "lr"),
    ({"lr": -1e-3}, ValueError, "lr"),
    ({"stage2_lr": float("nan")}, ValueError, "stage2_lr"),
    ({"weight_decay": -1.0}, ValueError, "weight_decay"),
    ({"schedule": "linear"}, ValueError, "schedule"),
    ({"seed": "0"}, TypeError, "seed"),
    ({"cuda_graph": 1}, TypeError, "cuda_graph"),
])
def test_bad_trainer_arguments(kw, exc, name):
    with pytest.raises(exc, match=name):
        trainer(make_model(config()), **kw)


def test_bad_fit_data():
    visual, labels, text = problem(n=16)
    tr = trainer(make_model(config()), stage1_epochs=1, stage2_epochs=1)
    with pytest.raises(ValueError, match="same length"):
        tr.fit(visual, labels[:-1], text)
    with pytest.raises(ValueError, match="empty"):
        tr.fit(visual[:0], labels[:0], text)
    with pytest.raises(ValueError, match=r"visual must have shape \[B, 24\]"):
        tr.fit(visual[:, :5], labels, text)
    with pytest.raises(TypeError, match="labels"):
        tr.fit(visual, labels.float(), text)
    with pytest.raises(ValueError, match="labels must be in"):
        tr.fit(visual, labels + 10, text)
    with pytest.raises(ValueError, match="text is required"):
        tr.fit(visual, labels)
    with pytest.raises(ValueError, match="text must have shape"):
        tr.fit(visual, labels, text[:, :3])
    with pytest.raises(ValueError, match="max_epochs"):
        tr.fit(visual, labels, text, max_epochs=-1)
    with pytest.raises(ValueError, match="eval_visual and eval_labels"):
        tr.fit(visual, labels, text, eval_visual=visual)
    with pytest.raises(TypeError, match="model"):
        Trainer(torch.nn.Linear(2, 2))
    bad = visual.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        tr.fit(bad, labels, text)


def test_baselines_learn_and_reject_bad_arguments():
    visual, labels, text = problem()
    probe, hist = baselines.train_linear_probe(visual, labels, epochs=5, batch_size=32, lr=1e-2, progress=False)
    assert baselines.accuracy(probe, visual, labels) >= 0.9 and hist[-1]["loss"] < hist[0]["loss"]
    mapping, hist = baselines.train_one_step_mapping(visual, labels, text, hidden=32, map_epochs=15, head_epochs=15,
                                                      batch_size=32, lr=1e-2, progress=False)
    assert baselines.accuracy(mapping, visual, labels) >= 0.8
    assert hist["map"][-1]["loss"] < hist["map"][0]["loss"]
    again, _ = baselines.train_linear_probe(visual, labels, epochs=5, batch_size=32, lr=1e-2, progress=False)
    assert torch.equal(again.head.weight, probe.head.weight)
    with pytest.raises(ValueError, match="epochs"):
        baselines.train_linear_probe(visual, labels, epochs=-1)
    with pytest.raises(ValueError, match="lr"):
        baselines.train_linear_probe(visual, labels, lr=0)
    with pytest.raises(ValueError, match="labels must be in"):
        baselines.train_one_step_mapping(visual, labels, text[:2])


def test_resume_with_other_data_size_and_wrong_device_are_clear_errors(tmp_path):
    """Review findings: a part-done stage resumed on differently sized data would silently reset
    AdamW and the schedule; data or text on another device than the model is named up front."""
    import seda_fast as sf
    from seda_fast.apps.trainer import Trainer, make_model

    cfg = sf.SeDAConfig(visual_dim=6, text_dim=4, num_classes=3, dim=8, hidden=8, learner_steps=1,
                        translator_steps=1)
    g = torch.Generator().manual_seed(0)
    v, y = torch.randn(16, 6, generator=g), torch.arange(16) % 3
    trainer = Trainer(make_model(cfg), stage1_epochs=2, stage2_epochs=0, batch_size=4, progress=False)
    trainer.fit(v, y, max_epochs=1)
    with pytest.raises(ValueError, match="part-done"):
        trainer.fit(v[:12], y[:12])
    with pytest.raises(ValueError, match="visual is on meta"):
        trainer.fit(torch.empty(16, 6, device="meta"), y)


def test_progress_bars_stay_short_when_stderr_is_not_a_terminal(capsys):
    """Written to a log (stderr not a TTY), a bar redraws at most once a minute: a 2-epoch-per-stage
    run with 24 steps per epoch writes each epoch's bar a couple of times, not once per step."""
    visual, labels, text = problem(n=96)
    tr = trainer(make_model(config(), seed=0), stage1_epochs=2, stage2_epochs=2, batch_size=4, progress=True)
    tr.fit(visual, labels, text)
    err = capsys.readouterr().err
    bars = 4
    assert err.count("stage 1 epoch") + err.count("stage 2 epoch") <= 3 * bars, err
    assert len(err) < 2000, len(err)


def test_evaluating_between_fit_calls_in_one_autocast_region_sees_the_trained_weights():
    """Casts the caller's autocast region made before fit (a first evaluation) are not served after
    it: each evaluation between ``fit(max_epochs=1)`` calls gives the logits an uncached run gives."""
    visual, labels, text = problem()

    def run(cache: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=cache):
            tr = trainer(make_model(config(), seed=7), stage1_epochs=1, stage2_epochs=2)
            logits = [tr.predict(visual)]
            for _ in range(3):
                tr.fit(visual, labels, text, max_epochs=1)
                logits.append(tr.predict(visual))
        return logits

    cached, uncached = run(True), run(False)
    assert not torch.equal(cached[-1], cached[-2])  # training changed the predictions
    for a, b in zip(cached, uncached):
        assert torch.equal(a, b)
