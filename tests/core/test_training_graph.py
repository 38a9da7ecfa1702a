"""A whole fused training step (loss, backward, optimizer) as one CUDA graph.

On the CPU: no op of the step reads a value back to the host while a capture is on (a
``.item()`` would fail the capture), a bad label still fails loudly then, the schedule tables
are built on the device once (no host-to-device copy or rebuild per step), and the Triton
launches per step follow the documented counts. On a GPU: the captured step replays with the
numbers of the same steps run directly.
"""
import collections
import copy

import pytest
import torch

from helpers import HOST_READS, make_batch, make_model, recording_capture
from seda_fast import schedule, validation
from seda_fast.ops.runtime import kernels, launch_options
from seda_fast.tools import cost_training
from seda_fast.tools.cost_baselines import record_aten_ops

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _step(model, stage, visual, labels, text, opt=None):
    loss = model.learner_loss(visual, labels) if stage == 1 else model.translator_loss(visual, labels, text)
    loss.backward()
    if opt is not None:
        opt.step()
    return loss


def _model_and_batch(stage, batch=6, **cfg):
    model = make_model(**cfg).to(DEVICE).train()
    visual, labels, text = (t.to(DEVICE) for t in make_batch(model.config, batch, seed=1))
    model.learner_loss(visual, labels)  # every class present gets a center (eager)
    model.backend = "triton"
    model.set_stage(stage)
    return model, visual, labels, text


@pytest.mark.parametrize("stage", [1, 2])
def test_no_host_read_while_capturing(stage, monkeypatch):
    """With a capture on, the fused step reads nothing back to the host: the label range check
    becomes a device-side assert."""
    model, visual, labels, text = _model_and_batch(stage, layers=2, learner_steps=2, translator_steps=2)
    monkeypatch.setattr(validation, "stream_capturing", lambda x: True)
    reads = collections.Counter(o.name for o in record_aten_ops(lambda: _step(model, stage, visual, labels, text))
                                if o.name in HOST_READS)
    assert not reads, dict(reads)
    for bad in (model.config.num_classes, -1):
        with pytest.raises(RuntimeError, match=r"labels must be in \[0, "):
            _step(model, stage, visual, torch.full_like(labels, bad), text)


def test_label_check_while_capturing_is_four_kernels(monkeypatch):
    """A captured step pays its label range check on every replay: clamp, eq, all and the assert (the
    cost model prices these four kernel boundaries), none reading back."""
    labels = torch.tensor([2, 0, 6], device=DEVICE)
    monkeypatch.setattr(validation, "stream_capturing", lambda x: True)
    names = [o.name for o in record_aten_ops(lambda: validation.check_labels(labels, 3, 7)) if not o.view]
    assert names == ["clamp", "eq", "all", "_assert_async"], names
    assert len(names) == cost_training.LABEL_CHECK_KERNELS
    validation.check_labels(torch.tensor([255, 0], dtype=torch.uint8, device=DEVICE), 2, 300)  # C past uint8
    with pytest.raises(RuntimeError, match=r"labels must be in \[0, 200\)"):
        validation.check_labels(torch.tensor([250, 0], dtype=torch.uint8, device=DEVICE), 2, 200)


@pytest.mark.parametrize("stage", [1, 2])
def test_a_second_step_builds_no_constant_table(stage):
    """The time-embedding, noising and DDIM tables are gathered from the device cache after the
    first step: the second step's ops build none (no arange, exp, sin, cos or sqrt), so a captured
    step does not pay their kernels on every replay."""
    model, visual, labels, text = _model_and_batch(stage, layers=2, learner_steps=2, translator_steps=3)
    _step(model, stage, visual, labels, text)
    built = collections.Counter(o.name for o in record_aten_ops(lambda: _step(model, stage, visual, labels, text))
                                if o.name in {"arange", "exp", "sin", "cos", "sqrt"})
    assert not built, dict(built)


def test_label_range_still_checked_before_launch_without_capture():
    model, visual, labels, text = _model_and_batch(2, layers=1, learner_steps=1, translator_steps=1)
    with kernels().count_launches() as c, pytest.raises(ValueError, match=r"labels must be in \[0, "):
        _step(model, 2, visual, labels - 1, text)
    assert c.count == 0


def test_schedule_tables_are_built_once_per_device():
    assert torch.equal(schedule.ddim_coefficients_on(50, 4, DEVICE, torch.float32).cpu(),
                       schedule.ddim_coefficients(50, 4).float())
    assert schedule.sampling_timesteps_on(50, 4, DEVICE).tolist() == schedule.sampling_timesteps(50, 4)[1:]
    a = schedule.alpha_bar_on(50, DEVICE)
    assert a is schedule.alpha_bar_on(50, DEVICE) and torch.equal(a.cpu(), schedule.alpha_bar(50))


@pytest.mark.parametrize("fused_impl", ["rowblock", "phases"])
@pytest.mark.parametrize("layers,steps", [(1, 1), (2, 3), (3, 4)])
def test_launches_per_step(layers, steps, fused_impl):
    """Triton launches of one fused step (loss + backward), through the launch hook:
    stage 1: the center EMA (one launch), the center loss (one: its gradient formed with it) and the
    diffusion term: row
    blocks, the x0 loss, its backward and its weight gradients (2 launches when L = 1, else 3);
    phases, its L + 1 forward and L + 1 backward phases;
    stage 2: the semantic feature, the x0 loss, the unroll forward; the x0 loss backward and its
    weight gradients; the unroll backward. Row blocks: the Learner sampler's 1 launch, the x0 loss
    op's, the unroll forward's 1, per unroll step one backward kernel and 4 (L = 1) or 5
    weight-gradient launches. Phases (``"save"``; one launch per phase, the semantic prefix without
    its CUDA graph): the schedule's first 2 + K1 L phases (folded at these batches), the diffusion term's L + 1 forward
    and L + 1 backward phases, the unroll's K (L + 1) + 2 forward and K (L + 2) + ceil(K / 2) + 1
    backward phases (a weight-gradient phase per two steps)."""
    from seda_fast.ops.infer_phases import launch_options
    wgrad_x0 = 2 if layers == 1 else 3
    if fused_impl == "rowblock":
        stage2 = 3 + 1 + wgrad_x0 + steps * (1 + (4 if layers == 1 else 5))
    else:
        stage2 = (2 + steps * layers) + 2 * (layers + 1) + (steps * (layers + 1) + 2) \
            + steps * (layers + 2) + -(-steps // 2) + 1
    want = {1: 4 + wgrad_x0 if fused_impl == "rowblock" else 2 + 2 * (layers + 1), 2: stage2}
    for stage in (1, 2):
        model, visual, labels, text = _model_and_batch(stage, layers=layers, learner_steps=steps,
                                                       translator_steps=steps)
        model.fused_impl = fused_impl
        with kernels().count_launches() as c, launch_options(graph=False):
            _step(model, stage, visual, labels, text)
        assert c.count == want[stage], (stage, collections.Counter(c.names))


@pytest.mark.parametrize("stage", [1, 2])
def test_issued_phase_ranges_go_through_the_graph_cache(stage, monkeypatch):
    """Issued from Python, each phase range of a fused step (stage 1: the diffusion term's forward
    and backward; stage 2: those and the unroll's) goes through the graph cache, here with a
    stand-in capture (``helpers.recording_capture``); two steps give the numbers of the same
    steps with ``launch_options(graph=False)``, bitwise. Inside a caller's capture the ranges
    bypass the cache. (The smallest model: this checks the wiring, the kernels' own tests the math.)"""
    graphs = kernels().graphs_module
    cache = graphs.LaunchGraphs(capture_fn=recording_capture)
    monkeypatch.setattr(graphs, "GRAPHS", cache)
    model, visual, labels, text = _model_and_batch(stage, layers=1, learner_steps=1, translator_steps=1)
    twin = copy.deepcopy(model)
    runs = []
    for m, graph in ((model, True), (twin, False)):
        torch.manual_seed(3)
        with launch_options(graph=graph):
            losses = [_step(m, stage, visual, labels, text).detach() for _ in range(2)]
        runs.append(losses + [p.grad for p in m.parameters() if p.grad is not None] + [m.centers.clone()])
    ranges = 2 if stage == 1 else 4
    assert cache.plain + cache.captures + cache.replays == 2 * ranges, (cache.plain, cache.captures, cache.replays)
    assert len(runs[0]) == len(runs[1])
    for x, y in zip(*runs):
        assert torch.equal(x, y)
    seen = cache.plain + cache.captures + cache.replays
    monkeypatch.setattr(validation, "stream_capturing", lambda x: True)
    _step(model, stage, visual, labels, text)
    assert cache.plain + cache.captures + cache.replays == seen


@pytest.mark.skipif(DEVICE.type != "cuda", reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("stage", [1, 2])
def test_whole_step_replays_as_one_cuda_graph(stage):  # pragma: no cover - GPU only
    """Capture ``loss.backward(); opt.step()`` (AdamW with ``capturable=True``) once, replay it,
    and compare with the same steps run directly on a copy: the random draws come from the default
    CUDA generator, reseeded before each replay and each direct step (a graph replays its random
    ops from the generator's state at replay time, as a direct call would)."""
    model, visual, labels, text = _model_and_batch(stage, batch=24, layers=2, learner_steps=3, translator_steps=3)
    twin = copy.deepcopy(model)

    def adamw(m):
        return torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3, capturable=True)
    opt, twin_opt = adamw(model), adamw(twin)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: Triton compiles, AdamW builds its state, tables reach the device
        torch.cuda.manual_seed(11)
        opt.zero_grad(set_to_none=True)
        _step(model, stage, visual, labels, text, opt)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.manual_seed(11)
    twin_opt.zero_grad(set_to_none=True)
    _step(twin, stage, visual, labels, text, twin_opt)

    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with kernels().count_launches() as captured, torch.cuda.graph(graph):
        static_loss = _step(model, stage, visual, labels, text, opt)
    assert captured.count > 0
    for r in range(3):
        torch.cuda.manual_seed(20 + r)
        with kernels().count_launches() as replayed:
            graph.replay()
        assert replayed.count == 0  # no launch from Python
        torch.cuda.manual_seed(20 + r)
        twin_opt.zero_grad(set_to_none=True)
        loss = _step(twin, stage, visual, labels, text, twin_opt)
        torch.testing.assert_close(static_loss, loss.detach(), rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(model.centers, twin.centers, rtol=1e-5, atol=1e-6)
