"""What the applications' training loops share (the SeDA :class:`~seda_fast.apps.trainer.Trainer`
and the baselines): dataset checks, seeded mini-batches, the cosine schedule, progress bars and
evaluation in eval mode."""
from __future__ import annotations

import contextlib
import math

import torch

from .. import progress
from .. import validation as val


def check_dataset(visual, labels, visual_name: str = "visual", labels_name: str = "labels",
                  num_classes: int | None = None, visual_dim: int | None = None,
                  device: torch.device | None = None) -> None:
    """``visual [N, D]`` floating and ``labels [N]`` integer (in ``[0, num_classes)``), N >= 1,
    on the same device (``device``, the model's, when given)."""
    val.check_features(visual_name, visual, visual_dim, device)
    if isinstance(labels, torch.Tensor) and labels.dim() == 1 and labels.shape[0] != visual.shape[0]:
        raise ValueError(f"{visual_name} has {visual.shape[0]} rows but {labels_name} has {labels.shape[0]}; "
                         "they must have the same length")
    val.check_labels(labels, visual.shape[0], num_classes, visual.device, labels_name, owner=visual_name)


def minibatches(n: int, batch_size: int, generator: torch.Generator | None, shuffle: bool = True):
    """Index tensors ``[<= batch_size]`` covering ``range(n)`` once, in a ``generator``-drawn order."""
    device = generator.device if generator is not None else "cpu"
    order = torch.randperm(n, generator=generator, device=device) if shuffle else torch.arange(n, device=device)
    return list(order.split(batch_size))


def cosine_lambda(total_steps: int):
    """Multiplier for LambdaLR: half-cosine from 1 to 0 over ``total_steps`` optimizer steps."""
    total = max(1, int(total_steps))
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def progress_bar(iterable, enabled: bool, desc: str, total: int | None = None):
    """A tqdm bar over ``iterable`` that disappears when done (``enabled=False``: the iterable itself)."""
    return progress.bar(iterable, enabled=enabled, desc=desc, total=total, leave=False)


def wait_for(device: torch.device) -> None:
    """Wait until the work queued on ``device`` is done (CUDA runs it asynchronously), so that a
    clock read next counts it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """``with eval_mode(model):`` runs the block with ``model.eval()`` and restores the mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def flush_denormals():
    """Flush denormal floats to zero for the block (late in a cosine decay, denormal Adam states
    slow CPUs ~20x), then back to torch's default (off). The setting is process-global, so a
    command turns it on only while it runs."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
