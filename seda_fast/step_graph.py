"""A whole training step (loss, backward, optimizer step) captured once as a CUDA graph and
replayed on every later call: :class:`StepGraph`.

Issued from Python, a fused training step at small batches is bound by the host (hundreds of
aten ops and launches, see README's training table); replayed as one graph it pays one launch.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch.autograd.graph import increment_version

from . import validation as val
from .model import SeDA
from .nvtx import nvtx_range
from .ops import weights


def cuda_capture(run, generators=()):
    """Capture ``run()`` as a CUDA graph on the current device (nothing executes): ``(outputs,
    replay)``, ``outputs`` what ``run`` returned, static tensors that every ``replay()`` overwrites.
    ``generators``: private CUDA generators ``run`` draws from, registered with the graph so each
    replay draws from (and advances) their state at replay time, as the default generator's."""
    graph = torch.cuda.CUDAGraph()
    for generator in generators:
        graph.register_generator_state(generator)
    current = torch.cuda.current_stream()
    try:  # a stream of the current device (the model's); "thread_local": another thread's CUDA calls (a
        # DataLoader's pin-memory thread) do not break the capture
        with torch.cuda.graph(graph, stream=torch.cuda.Stream(), capture_error_mode="thread_local"):
            outputs = run()
    finally:  # (torch.cuda.graph leaves its stream current when ending a failed capture raises)
        torch.cuda.set_stream(current)
    return outputs, graph.replay


def train_step(model: SeDA, optimizer: torch.optim.Optimizer, inputs: tuple, *, generator=None,
               grad_clip: float | None = None, text_kind: str = "auto", check_loss=None):
    """One training step issued directly: zero the gradients, the stage's loss on ``inputs``
    (``(visual [B, Dv], labels [B])`` in stage 1, ``(visual, labels, text)`` in stage 2), backward,
    gradient-norm clipping to ``grad_clip`` (None: none), ``optimizer.step()``. Returns ``(loss [],
    parts)``, the loss detached. ``check_loss(loss)``, if given, runs before backward: a raise there
    leaves the parameters and the optimizer's state as they were (the gradients are None). Inside a
    caller's autocast region it runs with autocast's weight-cast cache off (:func:`fresh_weight_casts`).
    An optimizer none of whose parameters requires grad (one made before :meth:`SeDA.set_stage`) is
    refused: its step would train nothing."""
    params = optimized_params(optimizer)
    if not any(p.requires_grad for p in params):
        raise ValueError(f"none of the optimizer's parameters requires grad, so the step would train nothing; the "
                         f"model is in stage {model.stage}: make the optimizer after set_stage({model.stage}) "
                         f"(over the parameters with requires_grad)")
    optimizer.zero_grad(set_to_none=True)
    with fresh_weight_casts(model.device):
        if model.stage == 1:
            loss, parts = model.learner_loss(*inputs, generator, return_parts=True)
        else:
            loss, parts = model.translator_loss(*inputs, generator, text_kind=text_kind, return_parts=True)
        if check_loss is not None:
            check_loss(loss)
        loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return loss.detach(), parts


@contextlib.contextmanager
def fresh_weight_casts(device: torch.device):
    """A context for training run inside a caller's ``torch.autocast`` region: autocast keeps each
    weight's cast copy until its outermost region exits, so the steps after the first would compute
    with the first step's weights (the optimizer updates them in place), and so would the caller's
    evaluation after them. Where such a region is open for ``device``'s type with that cache on, the
    block runs in a nested region of the same dtype with the cache off, and the cache (copies made
    before the block) is emptied after it; else the block runs as it is."""
    if not (torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type)
            and torch.is_autocast_cache_enabled()):
        yield
        return
    try:
        with torch.autocast(device.type, dtype=torch.get_autocast_dtype(device.type), cache_enabled=False):
            yield
    finally:
        torch.clear_autocast_cache()


def optimized_params(optimizer: torch.optim.Optimizer) -> list:
    """The parameters of every param group of ``optimizer``, in order."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def check_capturable(optimizer: torch.optim.Optimizer) -> None:
    """Only an optimizer whose every param group says ``capturable=True`` keeps its step on the
    device (others read their step count or lr back to the host): say so before any step."""
    if not all(group.get("capturable") is True for group in optimizer.param_groups):
        raise ValueError(f"optimizer must be built with capturable=True to be captured in a CUDA graph "
                         f"(e.g. torch.optim.{type(optimizer).__name__}(params, lr=..., capturable=True))")


class StepKey(NamedTuple):
    """What a captured step fixes: a call whose key differs warms up and captures a graph of its own."""
    stage: int
    training: bool
    fused_impl: str
    activation_memory: object
    per_class: object  # class texts (True), per-sample texts (False), stage 1 (None)
    autocast: tuple  # (enabled, dtype)
    inputs: tuple  # (shape, dtype, device) per input
    grad_clip: object
    config: tuple
    requires_grad: tuple
    frozen_versions: tuple  # the frozen parameters' versions (the weight caches' tables hold them)
    param_storage: tuple  # the trained parameters' data_ptr
    centers_storage: int
    hyperparameters: tuple  # per param group: (name, value) pairs, the lr tensor by address


_KEY_NAMES = {"training": "train/eval mode", "per_class": "class or sample texts",
              "inputs": "input shapes/dtypes/devices", "frozen_versions": "frozen parameters' versions",
              "param_storage": "parameters' storage", "centers_storage": "centers' storage"}


def key_difference(a: StepKey, b: StepKey) -> str:
    """The fields in which two StepGraph keys differ (the hyperparameters by name)."""
    changed = [_KEY_NAMES.get(name, name) for name in StepKey._fields if getattr(a, name) != getattr(b, name)]
    if a.hyperparameters != b.hyperparameters:
        names = set()
        for ga, gb in zip(a.hyperparameters, b.hyperparameters):  # per param group
            da, db, missing = dict(ga), dict(gb), object()
            names |= {k for k in da.keys() | db.keys() if da.get(k, missing) != db.get(k, missing)}
        if len(a.hyperparameters) != len(b.hyperparameters):
            names.add("the number of param groups")
        changed[-1] = "optimizer hyperparameters (" + ", ".join(sorted(names)) + ")"
        if "betas" in names:
            changed[-1] += (" [OneCycleLR and CyclicLR cycle Adam's beta1 every step, and torch's capturable Adam "
                            "reads betas as host numbers: pass cycle_momentum=False to capture the steps]")
    return ", ".join(changed) or "nothing (an equal key)"


@dataclass
class _Entry:
    """One key's state: direct steps run so far, then the captured graph's static tensors."""
    direct: int = 0
    replay: object = None
    inputs: tuple = ()
    outputs: tuple = ()
    grads: list = field(default_factory=list)
    refs: tuple = ()  # the tensors the graph reads and writes by address (held: their memory stays theirs)
    keep: list = field(default_factory=list)  # the weight caches' tensors at capture (held likewise)


class StepGraph:
    """``step = StepGraph(model, optimizer)``; then ``loss = step(visual, labels)`` in stage 1 or
    ``step(visual, labels, text)`` in stage 2 runs one training step on the batch (zero the
    gradients, the stage's loss, backward, ``grad_clip`` if given, ``optimizer.step()``) and
    returns the loss ``[]`` (a new tensor; a replay reads nothing back to the host). ``return_parts=True``
    returns ``(loss, parts)`` as the model's losses do.

    Where a step can be captured (the model on CUDA with ``backend="triton"``), each *key* (stage,
    train/eval mode, ``fused_impl``, ``activation_memory``, the inputs' shapes and dtypes, autocast,
    the parameters' storage, the optimizer's hyperparameters) first runs ``warmup`` direct steps on
    a side stream (Triton compiles, the optimizer builds its state, the constant tables reach the
    device); its next call captures the step into a CUDA graph, and that call and every later one
    copy their inputs into the graph's static inputs and replay it. After a replay ``p.grad`` is the
    graph's gradient, and the parameters' and buffers' version counters are bumped (as the step's
    in-place updates would, so caches keyed on them see the change). A replay first checks that the
    parameters, buffers, lrs and optimizer state are the tensors the graph captured (else, after a
    ``load_state_dict`` say, the key warms up and captures again). At most ``max_graphs`` keys are
    kept (the least recently used is dropped with its graph). The key also holds ``grad_clip``,
    ``requires_grad`` of every parameter, the config and the frozen parameters' versions. The
    model's modules are listed once, when the StepGraph is made (make a new one after adding one).
    Elsewhere every call runs the step directly: the same numbers, no capture. ``stats`` counts
    direct steps, captures and replays.

    ``generator``: the losses' random draws (None: the default generator of the model's device); a
    graph advances it on every replay, so replays draw what direct steps would. ``capture_failure``:
    an earlier StepGraph's (a string): this one then never tries to capture either.

    Captured steps differ from direct ones in what the graph fixes at capture:
    - each param group's ``lr`` becomes a 0-dim tensor on the model's device (unless it is one) at
      the first call, so a learning-rate scheduler's changes (filled in place) reach the replays;
    - a new ``lr`` object or a change of any other hyperparameter is a new key (``betas`` included:
      torch's capturable Adam reads them as host numbers, so tensor betas, as a checkpoint may hold,
      become floats at each call). A key dropped (at ``max_graphs``) before it ever captured means
      the keys change faster than they warm up (``OneCycleLR``'s momentum cycling does): nothing is
      being captured, and a warning names what changed;
    - a capture that fails raises a RuntimeError naming the first error (that call's step is not
      taken, its gradients are None, the weight caches are emptied); every later call runs directly
      (``capture_failure`` says why), but the failed capture's memory pool stays reserved (torch
      releases a pool only after a capture that ended), so a long run should restart;
    - the label range is checked by a device-side assert (a bad label trips it: CUDA reports the
      assert at the next synchronization and the process must restart), and with
      ``model.check_inputs`` the NaN/Inf checks run here, on the host, before each replay;
    - under ``torch.autocast`` the capture runs with autocast's weight-cast cache off.
    The optimizer must be built with ``capturable=True`` (:func:`check_capturable`).
    """

    def __init__(self, model: SeDA, optimizer: torch.optim.Optimizer, *, grad_clip: float | None = None,
                 generator: torch.Generator | None = None, warmup: int = 2, max_graphs: int = 4, capture_fn=None,
                 capture_failure: str | None = None):
        if not isinstance(model, SeDA):
            raise TypeError(f"model must be a seda_fast.SeDA, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.model, self.optimizer = model, optimizer
        self.grad_clip = None if grad_clip is None else val.check_number("grad_clip", grad_clip, positive=True)
        val.check_generator(generator, model.device)
        self.generator = generator
        self.warmup = val.check_int("warmup", warmup)
        self.max_graphs = val.check_int("max_graphs", max_graphs)
        self._capture_fn = capture_fn  # None: torch.cuda.graph where the step can be captured
        self._warned_churn = False
        if capture_failure is not None and not isinstance(capture_failure, str):
            raise TypeError(f"capture_failure must be a str or None, got {type(capture_failure).__name__}")
        self.capture_failure = capture_failure  # why a capture failed (no capture is tried after one)
        self._modules = list(model.modules())
        self._entries: dict[StepKey, _Entry] = {}
        self.stats = {"direct": 0, "captures": 0, "replays": 0}

    @property
    def captures(self) -> bool:
        """Whether calls are captured (else every call runs directly)."""
        if self.capture_failure is not None:
            return False
        if self._capture_fn is not None:
            return True
        model = self.model
        return model.device.type == "cuda" and model.backend == "triton"

    def _refs(self, trained: list, buffers: list) -> tuple:
        """The tensors a captured step reads or writes by address: the optimizer's parameters, the
        model's buffers, the lrs, the optimizer state."""
        opt = self.optimizer
        state = [v for p in trained for v in opt.state.get(p, {}).values() if isinstance(v, torch.Tensor)]
        return (*trained, *buffers, *(g["lr"] for g in opt.param_groups), *state)

    def _module_tensors(self) -> tuple[list, list]:
        """``(parameters, buffers)`` of the model's modules as they were when the StepGraph was made
        (walking the module tree on every call cost more host time than a replay saves per op; a
        parameter or buffer replaced inside a module is still seen)."""
        params, buffers = [], []
        for module in self._modules:
            params += [p for p in module._parameters.values() if p is not None]
            buffers += [b for b in module._buffers.values() if b is not None]
        return params, buffers

    def _key(self, inputs: tuple, per_class, params: list, trained: list) -> StepKey:
        model = self.model
        hyper = tuple(tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(g.items())
                            if k not in ("params", "lr") and isinstance(v, (bool, int, float, str, tuple, list,
                                                                             type(None))))
                      + (("lr", g["lr"].data_ptr() if isinstance(g["lr"], torch.Tensor) else g["lr"]),)
                      for g in self.optimizer.param_groups)
        autocast = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        return StepKey(model.stage, model.training, model.fused_impl, model.activation_memory, per_class, autocast,
                       tuple((t.shape, t.dtype, t.device) for t in inputs), self.grad_clip,
                       tuple(vars(model.config).values()), tuple(p.requires_grad for p in params),
                       tuple(p._version for p in params if not p.requires_grad), tuple(p.data_ptr() for p in trained),
                       model.centers.data_ptr(), hyper)

    def _run(self, inputs: tuple, text_kind: str):
        """One step, run directly or under capture: ``(loss, parts)``, the loss detached."""
        return train_step(self.model, self.optimizer, inputs, generator=self.generator, grad_clip=self.grad_clip,
                          text_kind=text_kind)

    def __call__(self, visual, labels, text=None, *, text_kind: str = "auto", return_parts: bool = False):
        model = self.model
        if not self.captures:
            self.stats["direct"] += 1
            loss, parts = self._run((visual, labels) if model.stage == 1 else (visual, labels, text), text_kind)
            return (loss, parts) if return_parts else loss
        with torch.cuda.device(model.device) if model.device.type == "cuda" else contextlib.nullcontext():
            loss, parts = self._captured_call(visual, labels, text, text_kind, return_parts)
        return (loss, parts) if return_parts else loss

    def _captured_call(self, visual, labels, text, text_kind: str, want_parts: bool):
        model, cfg = self.model, self.model.config
        if self._capture_fn is None:
            check_capturable(self.optimizer)
        for group in self.optimizer.param_groups:  # a graph reads the tensor a scheduler fills in place
            lr = group["lr"]  # (a CPU tensor, as a checkpoint loads it, would be read once, at capture)
            if not isinstance(lr, torch.Tensor) or lr.device != model.device:
                group["lr"] = torch.tensor(float(lr), dtype=torch.float32, device=model.device)
            if any(isinstance(b, torch.Tensor) for b in group.get("betas", ())):  # Adam reads them to the host
                group["betas"] = tuple(float(b) for b in group["betas"])
        val.check_features("visual", visual, cfg.visual_dim, model.device)
        val.check_labels(labels, visual.shape[0], None, model.device)  # the range: in the step (an assert in a graph)
        inputs, per_class = (visual, labels), None
        if model.stage == 2:
            val.text_is_per_class(text_kind, None, cfg.num_classes)
            val.check_features("text", text, cfg.text_dim, model.device)
            per_class = val.text_is_per_class(text_kind, text.shape[0], cfg.num_classes)
            inputs += (text,)
        params, buffers = self._module_tensors()
        trained = optimized_params(self.optimizer)
        key = self._key(inputs, per_class, params, trained)
        entry = self._entries.pop(key, None)
        refs = self._refs(trained, buffers)
        if entry is None or (entry.replay is not None and (
                len(refs) != len(entry.refs) or any(a is not b for a, b in zip(refs, entry.refs)))):
            entry = _Entry()  # new, or its graph would read tensors the model or optimizer no longer uses
        self._entries[key] = entry  # the most recently used last
        while len(self._entries) > self.max_graphs:
            dropped = next(iter(self._entries))
            if self._entries.pop(dropped).replay is None and not self._warned_churn:
                self._warned_churn = True
                warnings.warn(f"StepGraph: a step key was dropped before it was captured (max_graphs="
                              f"{self.max_graphs}, warmup={self.warmup}): the keys change faster than they warm "
                              f"up, so steps run directly. Changed since: {key_difference(dropped, key)}",
                              RuntimeWarning, stacklevel=3)
        if entry.replay is None and entry.direct < self.warmup:
            entry.direct += 1
            self.stats["direct"] += 1
            with self._side_stream():
                return self._run(inputs, text_kind)
        if model.check_inputs:  # as the direct steps check (the replay runs no Python)
            in_range_of = model.input_check_dtype()
            val.check_finite("visual", visual, in_range_of)
            if text is not None:
                val.check_finite("text", text, in_range_of)
        if entry.replay is None:
            self._capture(entry, inputs, text_kind)
            entry.refs = self._refs(trained, buffers)
        with nvtx_range("seda/step_graph"):
            for static, new in zip(entry.inputs, inputs):
                static.copy_(new)
            entry.replay()
        self.stats["replays"] += 1
        for p, g in zip(trained, entry.grads):
            p.grad = g
        for t in (*(p for p in trained if p.requires_grad), *buffers):  # updated in place by the replay,
            increment_version(t)  # unseen by autograd (the frozen parameters' versions are in the key)
        loss, parts = entry.outputs
        if not want_parts:
            return loss.clone(), None
        values = torch.stack([loss, *parts.values()]).unbind()  # one copy of the static outputs
        return values[0], dict(zip(parts, values[1:]))

    def _capture(self, entry: _Entry, inputs: tuple, text_kind: str) -> None:
        model = self.model
        entry.inputs = tuple(t.clone() for t in inputs)

        def run():  # autocast's weight-cast cache may not hold tensors made during a capture
            if not torch.is_autocast_enabled("cuda"):
                return self._run(entry.inputs, text_kind)
            with torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False):
                return self._run(entry.inputs, text_kind)
        try:  # torch.cuda.graph captures on a side stream of its own; the NaN/Inf checks' host reads
            # are done before each replay
            with model.unchecked_inputs():
                entry.outputs, entry.replay = (self._capture_fn or cuda_capture)(
                    run, () if self.generator is None else (self.generator,))
        except Exception as exc:  # (a capture executes nothing: this call's step is not taken)
            self._entries.clear()  # (no key captures again: their graphs and static tensors can go)
            self.optimizer.zero_grad(set_to_none=True)  # (the capture's gradients were never computed,
            weights.clear_caches()  # nor were tables the weight caches missed during it)
            self.capture_failure = _first_error(exc)
            raise RuntimeError(f"StepGraph could not capture the step as a CUDA graph ({self.capture_failure}); "
                               f"this step was not taken and every later call runs directly, but the failed "
                               f"capture's memory stays reserved: for a long run restart the process and train "
                               f"without capture (Trainer(cuda_graph=False) or seda_fast.step_graph.train_step)"
                               ) from exc
        entry.grads = [p.grad for p in optimized_params(self.optimizer)]
        entry.keep = weights.cached_tensors()
        self.stats["captures"] += 1

    def _side_stream(self):
        """Warm-up steps run on a side stream (as CUDA-graph capture asks), joined both ways."""
        if self._capture_fn is not None or self.model.device.type != "cuda":
            return contextlib.nullcontext()
        return joined_side_stream()


def _first_error(exc: BaseException) -> str:
    """``exc`` named after the error it was raised while handling, if any: ending a capture that an
    op invalidated raises a CUDA error of its own, with the op's error as its context."""
    first = exc.__context__ if exc.__cause__ is None and not exc.__suppress_context__ else None
    if first is None:
        return f"{type(exc).__name__}: {exc}"
    return f"{type(first).__name__}: {first}; then {type(exc).__name__}: {exc}"


@contextlib.contextmanager
def joined_side_stream():
    """Run the block on a new stream of the current device that first waits for the current
    stream, which then waits for it (the warm-up a CUDA-graph capture asks for)."""
    side, main = torch.cuda.Stream(), torch.cuda.current_stream()
    side.wait_stream(main)
    try:
        with torch.cuda.stream(side):
            yield
    finally:
        main.wait_stream(side)
