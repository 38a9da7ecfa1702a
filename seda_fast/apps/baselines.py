"""Baselines the demo compares SeDA with (README, the demo's table), trained like the Trainer does:
AdamW, seeded mini-batches, optional cosine decay.

* :func:`train_linear_probe`: ``logits = v W + b`` on the frozen visual feature ``v [N, Dv]``.
* :func:`train_one_step_mapping`: the one-step projection the paper argues against: an MLP
  ``v -> u_hat`` (``Dv -> H -> Dt``, SiLU) trained with MSE to the sample's class text feature
  ``t_y``, then (mapper frozen) a linear head on ``u_hat`` trained with cross-entropy.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from .. import validation as val
from ..step_graph import fresh_weight_casts
from .loop import check_dataset, cosine_lambda, eval_mode, minibatches, progress_bar


class LinearProbe(nn.Module):
    """``[N, Dv] -> logits [N, C]``."""

    def __init__(self, visual_dim: int, num_classes: int):
        super().__init__()
        self.head = nn.Linear(visual_dim, num_classes)

    def forward(self, visual: torch.Tensor) -> torch.Tensor:
        return self.head(visual)


class OneStepMapping(nn.Module):
    """``mapper: [N, Dv] -> [N, Dt]`` (Linear, SiLU, Linear), ``head: [N, Dt] -> [N, C]``."""

    def __init__(self, visual_dim: int, text_dim: int, num_classes: int, hidden: int = 1024):
        super().__init__()
        self.mapper = nn.Sequential(nn.Linear(visual_dim, hidden), nn.SiLU(), nn.Linear(hidden, text_dim))
        self.head = nn.Linear(text_dim, num_classes)

    def forward(self, visual: torch.Tensor) -> torch.Tensor:
        return self.head(self.mapper(visual))


def _num_classes(labels: torch.Tensor, num_classes: int | None) -> int:
    if num_classes is None:
        return int(labels.max()) + 1
    return val.check_int("num_classes", num_classes)


def _train_loop(params, loss_fn, n: int, *, epochs: int, batch_size: int, lr: float, weight_decay: float,
                schedule: str, generator: torch.Generator, progress: bool, desc: str) -> list[dict]:
    """Shared AdamW loop: ``loss_fn(idx) -> scalar`` per mini-batch; returns per-epoch records."""
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps = math.ceil(n / batch_size) * epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(steps)) if schedule == "cosine" else None
    history = []
    with fresh_weight_casts(generator.device):  # (under a caller's autocast: no stale weight copies)
        for epoch in range(1, epochs + 1):
            start, total = time.perf_counter(), 0.0
            for idx in progress_bar(minibatches(n, batch_size, generator), progress, f"{desc} {epoch}/{epochs}"):
                loss = loss_fn(idx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                total += loss.item() * idx.numel()
            history.append({"epoch": epoch, "loss": total / n, "seconds": time.perf_counter() - start})
    return history


def _check_common(epochs, batch_size, lr, weight_decay, seed):
    val.check_int("epochs", epochs, 0)
    val.check_int("batch_size", batch_size)
    val.check_number("lr", lr, positive=True)
    val.check_number("weight_decay", weight_decay)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")


def train_linear_probe(visual: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None, *,
                       epochs: int = 20, batch_size: int = 256, lr: float = 1e-3, weight_decay: float = 1e-4,
                       schedule: str = "cosine", seed: int = 0, progress: bool = True):
    """Train a :class:`LinearProbe` on ``visual [N, Dv]`` / ``labels [N]`` with cross-entropy.

    Returns ``(model, history)``; the initial weights and the batch order depend only on ``seed``.
    """
    check_dataset(visual, labels)
    _check_common(epochs, batch_size, lr, weight_decay, seed)
    C = _num_classes(labels, num_classes)
    check_dataset(visual, labels, num_classes=C)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LinearProbe(visual.shape[1], C).to(device=visual.device, dtype=visual.dtype)
    g = torch.Generator(device=visual.device).manual_seed(seed)
    history = _train_loop(list(model.parameters()), lambda idx: F.cross_entropy(model(visual[idx]), labels[idx]),
                          visual.shape[0], epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                          schedule=schedule, generator=g, progress=progress, desc="linear probe")
    return model.eval(), history


def train_one_step_mapping(visual: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, *, hidden: int = 1024,
                           map_epochs: int = 20, head_epochs: int = 10, batch_size: int = 256, lr: float = 1e-3,
                           weight_decay: float = 1e-4, schedule: str = "cosine", seed: int = 0,
                           progress: bool = True):
    """Train a :class:`OneStepMapping`: MSE of ``mapper(v)`` to ``text[labels]`` (``text [C, Dt]``
    class features), then cross-entropy of the head on the frozen mapped feature.

    Returns ``(model, history)`` with ``history = {"map": [...], "head": [...]}``.
    """
    check_dataset(visual, labels)
    _check_common(map_epochs, batch_size, lr, weight_decay, seed)
    val.check_int("head_epochs", head_epochs, 0)
    val.check_int("hidden", hidden)
    val.check_features("text", text)
    C = text.shape[0]
    check_dataset(visual, labels, num_classes=C)  # text has one row per class
    text = text.to(device=visual.device, dtype=visual.dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = OneStepMapping(visual.shape[1], text.shape[1], C, hidden).to(device=visual.device,
                                                                            dtype=visual.dtype)
    g = torch.Generator(device=visual.device).manual_seed(seed)
    common = dict(batch_size=batch_size, lr=lr, weight_decay=weight_decay, schedule=schedule,
                  generator=g, progress=progress)
    map_hist = _train_loop(list(model.mapper.parameters()),
                           lambda idx: F.mse_loss(model.mapper(visual[idx]), text[labels[idx]]),
                           visual.shape[0], epochs=map_epochs, desc="one-step map", **common)
    model.mapper.requires_grad_(False)
    with torch.no_grad():
        mapped = torch.cat([model.mapper(chunk) for chunk in visual.split(4096)])
    head_hist = _train_loop(list(model.head.parameters()),
                            lambda idx: F.cross_entropy(model.head(mapped[idx]), labels[idx]),
                            visual.shape[0], epochs=head_epochs, desc="one-step head", **common)
    return model.eval(), {"map": map_hist, "head": head_hist}


@torch.no_grad()
def accuracy(model: nn.Module, visual: torch.Tensor, labels: torch.Tensor, batch_size: int = 4096) -> float:
    """Top-1 accuracy of ``model(visual) -> logits [N, C]`` against ``labels [N]``."""
    check_dataset(visual, labels)
    with eval_mode(model):
        logits = torch.cat([model(chunk) for chunk in visual.split(batch_size)])
    return float((logits.argmax(1) == labels).to(torch.float64).mean())
