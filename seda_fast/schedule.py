"""Cosine noise schedule and the K-step DDIM (eta = 0, x0-prediction) tables, in float64.

Conventions (docs/math.md, "Noise schedule" and "Reverse steps"): the reverse loop runs k = K, K-1, ..., 1 and goes from
t = tau_k to t' = tau_{k-1}. Row ``k - 1`` of every per-step table belongs to step k:
``ddim_coefficients(T, K)[k - 1] = (a_k, b_k)`` and the time-embedding table's row k - 1
is ``e(tau_k)``. The loop therefore reads rows K-1 down to 0.
"""
from __future__ import annotations

import math

import torch


# Pure functions of (T, K): cached in a dict (not functools.lru_cache, which torch.compile
# ignores), and marked constant so torch.compile calls them instead of tracing the T-step loop.
_CACHE: dict = {}


@torch.compiler.assume_constant_result
def _alpha_bar(T: int) -> tuple:
    key = ("abar", T)
    if key not in _CACHE:
        _CACHE[key] = _compute_alpha_bar(T)
    return _CACHE[key]


def _compute_alpha_bar(T: int) -> tuple:
    def f(t: int) -> float:
        return math.cos(((t / T) + 0.008) / 1.008 * math.pi / 2) ** 2

    abar = [1.0]
    for t in range(1, T + 1):
        beta = min(1.0 - f(t) / f(t - 1), 0.999)
        abar.append(abar[-1] * (1.0 - beta))
    return tuple(abar)


def alpha_bar(T: int) -> torch.Tensor:
    """``abar_t`` for t = 0..T as a float64 tensor ``[T + 1]`` (``abar_0 = 1``)."""
    return torch.tensor(_alpha_bar(int(T)), dtype=torch.float64)


_DEVICE: dict = {}  # (table, T, K, dtype, device) -> the table on that device, built once


def device_cached(key: tuple, make, device) -> torch.Tensor:
    """``make(device)``, a constant table built for ``device``, kept per device after its first build
    (``key`` names the table and its arguments). Callers must not write to the returned tensor.

    A host-to-device copy from pageable memory on every training step would wait for the stream
    each time, inside a CUDA-graph capture it would record a copy from a host buffer that is freed
    before the replay, and rebuilding a table on every step is kernels a captured step pays for.
    The table is built outside inference mode and autograd, so a table first built during
    ``torch.inference_mode()`` can still be saved for a later training step's backward. Not cached:
    under torch.compile (the plain build is traced, and the compiler folds the constant), on the
    meta device (the cost models' recordings then do not depend on call order), and when first
    asked for inside a CUDA-graph capture (its build would run only in that graph's replays; the
    capture recipe's warm-up steps build the tables before it)."""
    device = torch.device(device)
    if device.type == "meta" or torch.compiler.is_compiling():
        return make(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = key + (device,)
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing() and key not in _DEVICE:
        return make(device)
    table = _DEVICE.get(key)
    if table is None:
        with torch.inference_mode(False), torch.no_grad():
            table = _DEVICE[key] = make(device)
    return table


def alpha_bar_on(T: int, device) -> torch.Tensor:
    """:func:`alpha_bar` on ``device`` (cached there, read-only)."""
    return device_cached(("abar", int(T)), lambda dev: alpha_bar(T).to(dev), device)


def sampling_timesteps_on(T: int, K: int, device) -> torch.Tensor:
    """``tau_1 .. tau_K`` (:func:`sampling_timesteps` without ``tau_0``) as int64 ``[K]`` on
    ``device`` (cached there, read-only)."""
    return device_cached(("tau", int(T), int(K)),
                         lambda dev: torch.tensor(sampling_timesteps(T, K)[1:], device=dev), device)


def ddim_coefficients_on(T: int, K: int, device, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """:func:`ddim_coefficients` in ``dtype`` on ``device`` (cached there, read-only)."""
    return device_cached(("ddim", int(T), int(K), dtype),
                         lambda dev: ddim_coefficients(T, K).to(device=dev, dtype=dtype), device)


def sampling_timesteps(T: int, K: int) -> list[int]:
    """``tau_k = round(k * T / K)`` for k = 0..K, halves rounded up (exact integer arithmetic)."""
    if not 1 <= K <= T:
        raise ValueError(f"sampling steps K must be in [1, T={T}], got {K}")
    return [(2 * k * T + K) // (2 * K) for k in range(K + 1)]


@torch.compiler.assume_constant_result
def _ddim(T: int, K: int) -> tuple:
    key = ("ddim", T, K)
    if key not in _CACHE:
        _CACHE[key] = _compute_ddim(T, K)
    return _CACHE[key]


def _compute_ddim(T: int, K: int) -> tuple:
    abar = _alpha_bar(T)
    tau = sampling_timesteps(T, K)
    rows = []
    for k in range(1, K + 1):
        t, tp = tau[k], tau[k - 1]
        a = math.sqrt(1.0 - abar[tp]) / math.sqrt(1.0 - abar[t])
        b = math.sqrt(abar[tp]) - math.sqrt(abar[t]) * a
        rows.append((a, b))
    return tuple(rows)


def ddim_coefficients(T: int, K: int) -> torch.Tensor:
    """``[K, 2]`` float64: row k-1 = (a_k, b_k) with ``x_{tau_{k-1}} = a_k x_{tau_k} + b_k x0_hat``."""
    return torch.tensor(_ddim(int(T), int(K)), dtype=torch.float64)


def start_coefficients(T: int) -> tuple[float, float]:
    """``(sqrt(abar_T), sqrt(1 - abar_T))``: ``x_{tau_K} = first * cond + second * xi``."""
    abar_T = _alpha_bar(int(T))[-1]
    return math.sqrt(abar_T), math.sqrt(1.0 - abar_T)


def noising_coefficients(T: int, t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(sqrt(abar_t), sqrt(1 - abar_t))`` as ``[B, 1]`` columns for integer t in 1..T."""
    abar = alpha_bar_on(T, t.device)[t]
    return abar.sqrt().to(dtype).unsqueeze(1), (1.0 - abar).sqrt().to(dtype).unsqueeze(1)


def noising_table_on(T: int, device, dtype: torch.dtype) -> torch.Tensor:
    """:func:`noising_coefficients` of every t = 0..T as one ``[T + 1, 2]`` table in ``dtype`` on
    ``device`` (cached there, read-only): ``table[t]`` is ``[B, 2]`` in one gather, the same values."""
    return device_cached(("noising", int(T), dtype),
                         lambda dev: torch.cat(noising_coefficients(T, torch.arange(T + 1, device=dev), dtype), 1),
                         device)
