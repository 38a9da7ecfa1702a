"""``seda_fast.StepGraph``: a whole training step captured once and replayed.

Most tests use a stand-in capture (:func:`helpers.standin_capture`: it runs the step once for its
static outputs, puts the model, optimizer and random state back as a capture that executes nothing
would leave them, and replays by running the step and copying the results into the static
tensors), so the wiring is checked on the CPU: which calls run directly, capture or replay, that every call is
exactly one step with the numbers of a plain loop, bitwise, and the errors. The wiring does not
depend on the backend, so most run the eager one (fast); one runs the fused kernels under the
interpreter. On a GPU a real CUDA graph replays against the same steps run directly.
"""
import copy
import importlib

import pytest
import torch

from helpers import make_batch, make_model, standin_capture, step_state_tensors
from seda_fast import StepGraph
from seda_fast.step_graph import check_capturable

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _setup(stage, backend="eager", **cfg):
    model = make_model(dim=18, hidden=26, layers=1, learner_steps=1, translator_steps=2, **cfg).to(DEVICE).train()
    visual, labels, text = (t.to(DEVICE) for t in make_batch(model.config, 7, seed=2))
    model.learner_loss(visual, labels)  # every class present gets a center
    model.backend = backend
    model.set_stage(stage)
    return model, visual, labels, text


def _adamw(model, lr=1e-2, betas=(0.9, 0.999)):
    """AdamW; on CUDA capturable (a tensor lr or tensor betas need it there)."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=betas,
                             capturable=DEVICE.type == "cuda")


def _plain_step(model, opt, stage, visual, labels, text, clip=None, generator=None):
    opt.zero_grad(set_to_none=True)
    loss = model.learner_loss(visual, labels, generator) if stage == 1 else \
        model.translator_loss(visual, labels, text, generator)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
    opt.step()
    return loss.detach()


@pytest.mark.parametrize("stage,backend,warmup,replays,private", [
    (1, "eager", 2, 3, False), (2, "eager", 2, 3, False), (2, "eager", 1, 3, True), (1, "triton", 1, 2, False)])
def test_replayed_steps_equal_a_plain_loop(stage, backend, warmup, replays, private):
    """Warm-up calls, a capture, replays: each call one step, bitwise the plain loop's losses,
    parameters, gradients, centers and optimizer state, a scheduler's lr reaching the replays;
    ``private``: the draws from a generator of the step's own, seeded once."""
    model, visual, labels, text = _setup(stage, backend)
    twin = copy.deepcopy(model)
    opt, twin_opt = _adamw(model), _adamw(twin, torch.tensor(1e-2, device=DEVICE))  # StepGraph makes lr a tensor
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    twin_sched = torch.optim.lr_scheduler.LambdaLR(twin_opt, lambda s: 1.0 / (1 + s))
    gens = [torch.Generator(DEVICE).manual_seed(5) if private else None for _ in range(2)]
    step = StepGraph(model, opt, grad_clip=0.5, generator=gens[0], warmup=warmup,
                     capture_fn=standin_capture(model, opt))
    batches = [[t.to(DEVICE) for t in make_batch(model.config, 7, seed=10 + i)] for i in range(warmup + replays)]
    for i, (v, y, t) in enumerate(batches):
        torch.manual_seed(100 + i)
        loss = step(v, y, t)
        torch.manual_seed(100 + i + 1000 * private)  # a private generator's draws ignore the default one
        want = _plain_step(twin, twin_opt, stage, v, y, t, clip=0.5, generator=gens[1])
        assert torch.equal(loss, want), (i, loss, want)
        sched.step()
        twin_sched.step()
    assert step.stats == {"direct": warmup, "captures": 1, "replays": replays}
    assert isinstance(opt.param_groups[0]["lr"], torch.Tensor)
    assert torch.equal(opt.param_groups[0]["lr"], twin_opt.param_groups[0]["lr"])
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(p, q), name
        assert (p.grad is None) == (q.grad is None) and (p.grad is None or torch.equal(p.grad, q.grad)), name
    assert torch.equal(model.centers, twin.centers)
    for a, b in zip(step_state_tensors(model, opt), step_state_tensors(twin, twin_opt)):
        assert torch.equal(a, b)


@pytest.mark.filterwarnings("ignore:StepGraph:RuntimeWarning")  # keys dropped uncaptured: on purpose here
def test_a_new_key_warms_up_and_captures_again():
    """A new batch size, eval mode or stage is a new key; ``max_graphs`` keeps the most recent."""
    model, visual, labels, text = _setup(1)
    opt = _adamw(model)
    step = StepGraph(model, opt, warmup=1, max_graphs=2, capture_fn=standin_capture(model, opt))
    for _ in range(3):
        step(visual, labels)
    assert step.stats == {"direct": 1, "captures": 1, "replays": 2}
    step(visual[:5], labels[:5])
    step(visual[:5], labels[:5])
    assert step.stats == {"direct": 2, "captures": 2, "replays": 3}
    step(visual[:4], labels[:4])  # a third key: the least recently used (7 rows) is freed
    step(visual, labels)
    assert step.stats["direct"] == 4 and len(step._entries) == 2
    loss, parts = step(visual, labels, return_parts=True)
    assert set(parts) == {"diffusion", "center", "aux"} and loss.shape == ()
    assert step.stats == {"direct": 4, "captures": 3, "replays": 4}
    opt.load_state_dict(opt.state_dict())  # new optimizer-state tensors: the graph would write the old ones
    step(visual, labels)
    assert step.stats == {"direct": 5, "captures": 3, "replays": 4}
    step.grad_clip = 1.0  # part of the key
    step(visual, labels)
    assert step.stats == {"direct": 6, "captures": 3, "replays": 4}
    opt.param_groups[0]["betas"] = [0.8, 0.999]  # a hyperparameter given as a list is in the key too
    step(visual, labels)
    assert step.stats == {"direct": 7, "captures": 3, "replays": 4}


def test_one_cycle_momentum_cycling_warns_and_without_it_the_steps_capture():
    """OneCycleLR gives AdamW new betas every step (torch's capturable Adam reads betas as host
    numbers, so they stay floats in the key): every call is a new key, nothing is captured, and the
    warning says to pass ``cycle_momentum=False``; with it the steps capture and replay."""
    model, visual, labels, text = _setup(2)
    opt = _adamw(model)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=12)
    step = StepGraph(model, opt, max_graphs=2, capture_fn=standin_capture(model, opt))
    with pytest.warns(RuntimeWarning, match=r"optimizer hyperparameters \(betas\).*cycle_momentum=False"):
        for _ in range(5):
            step(visual, labels, text)
            sched.step()
    assert step.stats == {"direct": 5, "captures": 0, "replays": 0}
    opt = _adamw(model)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=12, cycle_momentum=False)
    step = StepGraph(model, opt, capture_fn=standin_capture(model, opt))
    for _ in range(5):
        step(visual, labels, text)
        sched.step()
    assert step.stats == {"direct": 2, "captures": 1, "replays": 3}


def test_tensor_betas_become_floats():
    """Tensor betas (a checkpoint of a compiled optimizer may hold them) would be read to the host
    inside the capture: StepGraph makes them floats at the call."""
    model, visual, labels, text = _setup(1)
    opt = _adamw(model, betas=(torch.tensor(0.8), torch.tensor(0.99)))
    StepGraph(model, opt, capture_fn=standin_capture(model, opt))(visual, labels)
    beta1, beta2 = opt.param_groups[0]["betas"]
    assert type(beta1) is float and type(beta2) is float
    assert beta1 == pytest.approx(0.8) and beta2 == pytest.approx(0.99)


@pytest.mark.parametrize("foreach", [True, False])
def test_the_captured_step_reads_nothing_back_to_the_host(foreach, monkeypatch):
    """The whole step StepGraph captures (the fused loss, backward, clipping, AdamW capturable with
    its tensor lr; with foreach, tensor betas given, which StepGraph makes floats) issues no aten op
    that copies a value to the host, which a CUDA-graph capture forbids. On the CPU: capturable
    AdamW allowed there, the label check as it is while capturing, and a stand-in capture that
    records the step's ops."""
    from helpers import HOST_READS
    from seda_fast import validation
    from seda_fast.tools.cost_baselines import record_aten_ops
    adam_module = importlib.import_module("torch.optim.adam")  # (torch.optim's namespace hides the module)
    monkeypatch.setattr(adam_module, "_get_capturable_supported_devices", lambda supports_xla=True: ["cuda", "cpu"])
    monkeypatch.setattr(validation, "stream_capturing", lambda x: True)
    for stage in (1, 2):
        model, visual, labels, text = _setup(stage, "triton")
        betas = (torch.tensor(0.9), torch.tensor(0.999)) if foreach else (0.9, 0.999)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, betas=betas,
                                capturable=True, foreach=foreach)
        reads = []

        def recording(run, generators):
            ops = record_aten_ops(run)
            reads.extend(o.name for o in ops if o.name in HOST_READS)
            return standin_capture(model, opt)(run, generators)
        step = StepGraph(model, opt, grad_clip=1.0, warmup=1, capture_fn=recording)
        step(visual, labels, text)  # a direct step: AdamW's state exists before the capture, as on a GPU
        step(visual, labels, text)
        assert step.stats["captures"] == 1 and reads == [], (stage, reads)


def test_keys_that_change_every_call_warn_once():
    """A hyperparameter set anew before every call makes every call a new key: nothing is captured,
    and when a key is dropped before its capture a warning names what changed (once)."""
    model, visual, labels, text = _setup(1)
    opt = _adamw(model)
    step = StepGraph(model, opt, max_graphs=2, capture_fn=standin_capture(model, opt))
    with pytest.warns(RuntimeWarning, match=r"dropped before it was captured .*weight_decay") as caught:
        for i in range(6):
            opt.param_groups[0]["weight_decay"] = 0.01 * (i + 1)
            step(visual, labels)
    assert len([w for w in caught if "dropped before" in str(w.message)]) == 1
    assert step.stats == {"direct": 6, "captures": 0, "replays": 0}


def test_a_failed_capture_raises_naming_the_first_error_then_every_call_runs_directly():
    """A capture that fails raises a RuntimeError naming the error that started it (ending an
    invalidated capture raises a CUDA error of its own), takes no step and leaves no gradient;
    every later call, of any key, runs directly, bitwise the plain steps."""
    from seda_fast.ops import weights
    model, visual, labels, text = _setup(2)
    twin = copy.deepcopy(model)
    opt, twin_opt = _adamw(model), _adamw(twin, torch.tensor(1e-2, device=DEVICE))
    model.backend = "triton"
    with torch.no_grad():
        model.eval()(visual)  # fused inference fills the weight caches
    model.train().backend = "eager"
    assert weights.cached_tensors()

    def failing_capture(run, generators):
        try:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        finally:  # as torch.cuda.graph's exit ends the capture
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
    step = StepGraph(model, opt, warmup=1, capture_fn=failing_capture)
    for i, rows in enumerate((7, 7, 7, 5, 5, 5)):
        torch.manual_seed(i)
        v, y, t = visual[:rows], labels[:rows], text
        if i == 1:
            with pytest.raises(RuntimeError, match=r"StepGraph could not capture .*not permitted when stream is "
                                                   r"capturing; then RuntimeError: .*previous error during capture"):
                step(v, y, t)
            assert all(p.grad is None for p in model.parameters()) and step.capture_failure
            assert weights.cached_tensors() == []  # what a capture's cache misses left was never computed
            continue
        loss = step(v, y, t)
        torch.manual_seed(i)
        assert torch.equal(loss, _plain_step(twin, twin_opt, 2, v, y, t)), i
    assert step.stats == {"direct": 5, "captures": 0, "replays": 0} and not step.captures
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_a_capture_error_is_named_after_the_error_it_was_raised_handling():
    """Only the direct context counts: an error raised while handling another names both; one
    raised ``from None`` or without a context names itself."""
    from seda_fast.step_graph import _first_error

    def raised(fn):
        try:
            fn()
        except Exception as exc:
            return exc

    def while_handling():
        try:
            try:
                raise KeyError("older")
            except KeyError:
                raise ValueError("op failed")
        finally:
            raise RuntimeError("capture invalidated")

    def from_none():
        try:
            raise ValueError("op failed")
        except ValueError:
            raise RuntimeError("capture invalidated") from None
    assert _first_error(raised(while_handling)) == ("ValueError: op failed; then RuntimeError: capture invalidated")
    assert _first_error(raised(from_none)) == "RuntimeError: capture invalidated"
    assert _first_error(RuntimeError("x")) == "RuntimeError: x"


def test_without_a_capture_every_call_is_a_plain_step():
    """With the eager backend (or on the CPU) nothing is captured: each call is the plain step."""
    model, visual, labels, text = _setup(2)
    twin = copy.deepcopy(model)
    opt, twin_opt = _adamw(model), _adamw(twin)
    step = StepGraph(model, opt)
    assert not step.captures
    for i in range(3):
        torch.manual_seed(i)
        loss = step(visual, labels, text)
        torch.manual_seed(i)
        assert torch.equal(loss, _plain_step(twin, twin_opt, 2, visual, labels, text))
    assert step.stats == {"direct": 3, "captures": 0, "replays": 0}
    assert not isinstance(opt.param_groups[0]["lr"], torch.Tensor)  # only a capture needs a tensor lr


def test_bad_arguments_fail_before_any_step():
    model, visual, labels, text = _setup(2)
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(TypeError, match="model must be a seda_fast.SeDA"):
        StepGraph(torch.nn.Linear(2, 2), opt)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        StepGraph(model, "adamw")
    with pytest.raises(ValueError, match="grad_clip must be > 0"):
        StepGraph(model, opt, grad_clip=0.0)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        StepGraph(model, opt, generator=5)
    if DEVICE.type == "cuda":
        with pytest.raises(ValueError, match="generator is on cpu"):
            StepGraph(model, opt, generator=torch.Generator())
    with pytest.raises(ValueError, match="capturable=True"):
        check_capturable(opt)
    with pytest.raises(ValueError, match="capturable=True"):  # SGD has no capturable flag: it reads lr back
        check_capturable(torch.optim.SGD(model.parameters(), lr=0.1))
    step = StepGraph(model, opt, capture_fn=standin_capture(model, opt))
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"visual must have shape \[B, 37\]"):
        step(visual[:, :5], labels, text)
    with pytest.raises(ValueError, match=r"labels must have shape \[7\]"):
        step(visual, labels[:3], text)
    with pytest.raises(TypeError, match="text must be a torch.Tensor"):
        step(visual, labels, None)
    with pytest.raises(ValueError, match="text_kind must be"):
        step(visual, labels, text, text_kind="classes")
    assert step.stats == {"direct": 0, "captures": 0, "replays": 0}
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_check_inputs_reads_the_inputs_before_each_replay():
    model, visual, labels, text = _setup(1)
    model.check_inputs = True
    opt = _adamw(model)
    step = StepGraph(model, opt, warmup=1, capture_fn=standin_capture(model, opt))
    step(visual, labels)
    step(visual, labels)
    bad = visual.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"visual contains 1 NaN/Inf"):
        step(bad, labels)
    bad[3, 1] = 1e5  # beyond fp16: refused before a replay as before a direct step
    with torch.autocast("cpu", dtype=torch.float16), pytest.raises(ValueError, match="beyond torch.float16's range"):
        step(bad, labels)
    assert step.stats == {"direct": 1, "captures": 1, "replays": 1} and model.check_inputs


@pytest.mark.skipif(DEVICE.type != "cuda", reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("stage,private,schedule", [(1, False, "lambda"), (2, False, "lambda"), (2, True, "lambda"),
                                                    (2, False, "one_cycle")])
def test_cuda_step_graph_replays_the_direct_steps(stage, private, schedule):  # pragma: no cover - GPU only
    """A real CUDA graph: StepGraph (AdamW capturable, a decaying scheduler, or OneCycleLR without
    momentum cycling, its lr filled in place) against the same steps run directly on a copy, the
    draws from the default CUDA generator reseeded before each, or (``private``) from a CUDA
    generator of the step's own, registered with the graph."""
    model, visual, labels, text = _setup(stage, "triton")
    twin = copy.deepcopy(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, capturable=True)
    twin_opt = torch.optim.AdamW([p for p in twin.parameters() if p.requires_grad], lr=1e-2, capturable=True)
    if schedule == "lambda":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
        twin_sched = torch.optim.lr_scheduler.LambdaLR(twin_opt, lambda s: 1.0 / (1 + s))
    else:
        sched, twin_sched = (torch.optim.lr_scheduler.OneCycleLR(o, max_lr=1e-2, total_steps=10, cycle_momentum=False)
                             for o in (opt, twin_opt))
    gens = [torch.Generator(DEVICE).manual_seed(5) if private else None for _ in range(2)]
    step = StepGraph(model, opt, generator=gens[0])
    assert step.captures
    for i in range(5):
        v, y, t = (x.to(DEVICE) for x in make_batch(model.config, 24, seed=10 + i))
        torch.cuda.manual_seed(100 + i)
        loss = step(v, y, t)
        torch.cuda.manual_seed(100 + i + 1000 * private)  # a private generator's draws ignore the default one
        want = _plain_step(twin, twin_opt, stage, v, y, t, generator=gens[1])
        torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
        sched.step()
        twin_sched.step()
    assert step.stats == {"direct": 2, "captures": 1, "replays": 3}
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(model.centers, twin.centers, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # the replays bumped the versions, so the weight caches do not serve stale tables
        torch.testing.assert_close(model(visual.to(DEVICE)), twin(visual.to(DEVICE)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stage", [1, 2])
def test_train_step_inside_a_callers_autocast_steps_with_the_updated_weights(stage):
    """Steps issued inside one autocast region with its weight-cast cache on equal steps inside one
    with the cache off (the cache would hand every step after the first the first one's weights)."""
    from seda_fast.step_graph import train_step

    model, visual, labels, text = _setup(stage)
    inputs = (visual, labels) if stage == 1 else (visual, labels, text)
    runs = []
    for cache in (True, False):
        twin = copy.deepcopy(model)
        opt = _adamw(twin)
        g = torch.Generator(DEVICE).manual_seed(0)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, cache_enabled=cache):
            losses = [train_step(twin, opt, inputs, generator=g)[0] for _ in range(3)]
        runs.append((losses, [p.detach().clone() for p in twin.parameters()]))
    for a, b in zip(runs[0][0] + runs[0][1], runs[1][0] + runs[1][1]):
        assert torch.equal(a, b)


def test_a_failure_passed_on_means_no_capture_is_tried():
    """``capture_failure`` (an earlier StepGraph's) makes a new one run every step directly."""
    model, visual, labels, _ = _setup(1)
    calls = []
    step = StepGraph(model, _adamw(model), warmup=1, capture_fn=lambda *a: calls.append(a),
                     capture_failure="operation not permitted when stream is capturing")
    assert not step.captures
    for _ in range(3):
        step(visual, labels)
    assert step.stats == {"direct": 3, "captures": 0, "replays": 0} and calls == []
    with pytest.raises(TypeError, match="capture_failure must be a str or None"):
        StepGraph(model, _adamw(model), capture_failure=RuntimeError("x"))


@pytest.mark.parametrize("captured", [False, True])
def test_an_optimizer_made_before_set_stage_is_refused(captured):
    """After ``set_stage(2)`` an optimizer over stage 1's parameters would step nothing: every call
    (direct, or the warm-up of a captured one) refuses it before any gradient or state changes."""
    model, visual, labels, text = _setup(1)
    opt = _adamw(model)
    model.set_stage(2)
    step = StepGraph(model, opt, capture_fn=standin_capture(model, opt) if captured else None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="none of the optimizer's parameters requires grad.*set_stage\\(2\\)"):
        step(visual, labels, text)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and not opt.state
