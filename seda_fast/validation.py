"""Input checks run before any computation or kernel launch.

Shape, dtype and device checks are free (no device sync) and always on. Value checks (NaN/Inf)
read the data back, so they run only in ``check_inputs`` mode (the trainer turns it on).
Label range is always checked on the training path, whose loss is read back anyway.
"""
from __future__ import annotations

import math
import numbers

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def check_features(name: str, x, width: int | None = None, device: torch.device | None = None,
                   batch: int | None = None) -> None:
    """``x`` must be a floating ``[batch, width]`` tensor (None = any) on ``device`` (None = any)
    with at least one row."""
    cols = "D" if width is None else str(width)
    rows = "B" if batch is None else str(batch)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [{rows}, {cols}], got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16/bfloat16/float32/float64, got {x.dtype}")
    if x.dim() != 2 or (width is not None and x.shape[1] != width):
        raise ValueError(f"{name} must have shape [{rows}, {cols}], got {list(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {list(x.shape)}); need at least one row")
    if batch is not None and x.shape[0] != batch:
        raise ValueError(f"{name} must have shape [{batch}, {cols}] (one row per sample), got {list(x.shape)}")
    if device is not None:
        check_device(name, x, device)


def check_device(name: str, x: torch.Tensor, device: torch.device, owner: str = "the model") -> None:
    if x.device.type != device.type or (device.index is not None and x.device.index not in (None, device.index)):
        raise ValueError(f"{name} is on {x.device} but {owner} is on {device}; move it with .to({str(device)!r})")


def stream_capturing(x: torch.Tensor) -> bool:
    """Whether ``x`` lives on a CUDA device whose current stream is capturing a CUDA graph (a check
    that reads a value back to the host would fail there)."""
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def check_labels(labels, batch: int, num_classes: int | None, device: torch.device | None = None,
                 name: str = "labels", owner: str = "the model", dtypes: tuple = INT_DTYPES) -> None:
    """``labels`` must be an integer ``[batch]`` tensor (of one of ``dtypes``) with values in
    ``[0, num_classes)`` (range unchecked when ``num_classes`` is None: the check syncs). While a
    CUDA graph is being captured the range is checked by a device-side assert instead (no sync; a
    bad label then trips it at replay: CUDA reports a device-side assert, its message on stderr)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.dtype not in dtypes:
        kinds = "an integer tensor" if dtypes == INT_DTYPES else " or ".join(map(str, dtypes))
        raise TypeError(f"{name} must be {kinds} (int64 class indices), got {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(f"{name} must have shape [{batch}] (one per sample), got {list(labels.shape)}")
    if device is not None:
        check_device(name, labels, device, owner)
    if num_classes is None or torch.compiler.is_compiling():
        return  # a data-dependent branch would break the graph; cross_entropy still rejects bad ids
    if stream_capturing(labels):  # reading the range would sync: check on the device, at replay
        top = min(num_classes - 1, torch.iinfo(labels.dtype).max)  # uint8 labels with C > 256: all in range
        in_range = labels.clamp(0, top).eq(labels).all()  # 3 kernels, then the assert's
        torch._assert_async(in_range, f"{name} must be in [0, {num_classes})")
        return
    if labels.numel() == 0:
        return
    lo, hi = (int(v) for v in torch.aminmax(labels))  # one kernel; the second read waits on nothing
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{name} must be in [0, {num_classes}), got values in [{lo}, {hi}]")


TEXT_KINDS = ("auto", "class", "sample")


def text_is_per_class(text_kind: str, rows: int | None, num_classes: int) -> bool:
    """Whether ``text`` with ``rows`` rows holds class texts (else per-sample texts): ``"class"`` and
    ``"sample"`` say so; ``"auto"`` reads ``num_classes`` rows as class texts."""
    if text_kind not in TEXT_KINDS:
        raise ValueError(f"text_kind must be 'auto', 'class' or 'sample', got {text_kind!r}")
    return text_kind == "class" or (text_kind == "auto" and rows == num_classes)


def check_finite(name: str, x: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    """Report NaN/Inf instead of letting them flow silently into the result (one reduction and its
    read-back: a sync). With ``dtype`` (the one ``x`` is computed in), finite values beyond its range
    count too: the cast would make them Inf. Skipped while torch.compile traces (it would break the
    graph)."""
    if torch.compiler.is_compiling():
        return
    lo, hi = (float(v) for v in torch.aminmax(x))  # NaN in x makes both NaN
    top = torch.finfo(x.dtype if dtype is None else dtype).max
    if -top <= lo and hi <= top:
        return  # (NaN fails both comparisons)
    nonfinite = int((~torch.isfinite(x)).sum())
    if nonfinite:
        raise ValueError(f"{name} contains {nonfinite} NaN/Inf value(s) (check_inputs=True)")
    count = int((~torch.isfinite(x.to(dtype))).sum())  # exactly those the cast rounds to Inf
    if count:
        raise ValueError(f"{name} has {count} value(s) beyond {dtype}'s range (|x| <= {top:.6g}), which the cast "
                         f"to the model's compute dtype makes Inf (check_inputs=True)")


def check_generator(generator, device: torch.device, owner: str = "the model") -> None:
    """``generator`` must be None or a ``torch.Generator`` on ``device``'s type (the random draws are
    made there)."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but {owner} is on {device}: the draws are made on "
                         f"{owner}'s device (torch.Generator(device={str(device)!r}))")


def check_int(name: str, value, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` must be an integer (an int or a numpy integer; not a bool) in ``[minimum, maximum]``;
    returned as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def check_number(name: str, value, *, positive: bool = False, maximum: float | None = None) -> float:
    """``value`` must be a finite real number >= 0 (> 0 when ``positive``), at most ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value
