"""Custom ops around :mod:`seda_fast.kernels.center_update`: the center EMA as a deterministic
per-class scatter-mean.

``seda_fast::center_ema_(centers!, initialized!, z, labels, momentum)`` (in place, one launch up to
512 rows, two past them);
``seda_fast::class_sums(z, labels, num_classes) -> (sums [C, d] fp32, counts [C] fp32)`` and
``seda_fast::ema_update_(centers!, initialized!, sums, counts, momentum)`` (in place), the same in
two launches. :func:`update_centers` (= ``reference.update_centers``) takes the one launch, or under
torch.distributed the two, with the all-reduce of sums and counts in between.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .runtime import kernels


@torch.library.custom_op("seda_fast::class_sums", mutates_args=())
def class_sums(z: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-class sums ``[C, d]`` (batch order) and counts ``[C]``, both fp32."""
    return kernels().class_sums(z, labels, num_classes)


@class_sums.register_fake
def _(z, labels, num_classes):
    return (z.new_empty(num_classes, z.shape[1], dtype=torch.float32),
            z.new_empty(num_classes, dtype=torch.float32))


@torch.library.custom_op("seda_fast::ema_update_", mutates_args=("centers", "initialized"))
def ema_update_(centers: Tensor, initialized: Tensor, sums: Tensor, counts: Tensor, momentum: float) -> None:
    """In place: ``centers`` EMA toward ``sums / counts`` for present classes; ``initialized |= present``."""
    kernels().ema_update(centers, initialized, sums, counts, momentum)


@ema_update_.register_fake
def _(centers, initialized, sums, counts, momentum):
    return None


@torch.library.custom_op("seda_fast::center_ema_", mutates_args=("centers", "initialized"))
def center_ema_(centers: Tensor, initialized: Tensor, z: Tensor, labels: Tensor, momentum: float) -> None:
    """In place: :func:`class_sums` of ``z`` then :func:`ema_update_` on them, in one launch (two past
    ``kernels.center_update.update_blocks``' ``R`` rows: the splits' sums, then their EMA)."""
    kernels().center_ema(centers, initialized, z, labels, momentum)


@center_ema_.register_fake
def _(centers, initialized, z, labels, momentum):
    return None


def update_centers(centers: Tensor, initialized: Tensor, z: Tensor, labels: Tensor, momentum: float) -> None:
    """``reference.update_centers`` on buffers: ``centers [C, d]``, ``initialized [C]`` bool (both
    updated in place), ``z [B, d]``, ``labels [B]``. One launch (two past 512 rows); under
    torch.distributed two, with the all-reduce of sums and counts in between."""
    with torch.no_grad():
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            center_ema_(centers, initialized, z.detach(), labels, float(momentum))
            return
        sums, counts = class_sums(z.detach(), labels, centers.shape[0])
        torch.distributed.all_reduce(sums)
        torch.distributed.all_reduce(counts)
        ema_update_(centers, initialized, sums, counts, float(momentum))
