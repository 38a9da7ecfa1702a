"""SeDA hyper-parameters (the symbols table of SPEC.md), validated on construction."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


def _positive_int(name: str, value, limit: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"SeDAConfig.{name} must be an int, got {type(value).__name__}")
    if not 1 <= value <= limit:
        raise ValueError(f"SeDAConfig.{name} must be in [1, {limit}], got {value}")


def _nonneg_float(name: str, value, *, positive: bool = False, at_most: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"SeDAConfig.{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"SeDAConfig.{name} must be finite, got {value}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"SeDAConfig.{name} must be {'> 0' if positive else '>= 0'}, got {value}")
    if at_most is not None and value > at_most:
        raise ValueError(f"SeDAConfig.{name} must be <= {at_most}, got {value}")


@dataclass
class SeDAConfig:
    """Shapes and weights of one SeDA model (SPEC.md, "Symbols and defaults").

    visual_dim (Dv), text_dim (Dt), num_classes (C) come from the data; dim (d) is the
    semantic width and must be even (the sinusoidal time embedding has d/2 frequencies);
    hidden (H) the denoiser width; layers (L) hidden layers per denoiser (1 input layer +
    L-1 residual); diffusion_steps (T) training steps; learner_steps / translator_steps
    (K1 / K2) DDIM sampling steps, at most T.
    """

    visual_dim: int
    text_dim: int
    num_classes: int
    dim: int = 512
    hidden: int = 1024
    layers: int = 2
    diffusion_steps: int = 1000
    learner_steps: int = 10
    translator_steps: int = 10
    center_momentum: float = 0.9
    center_temperature: float = 1.0
    lambda_sc: float = 1.0
    lambda_aux: float = 1.0
    lambda_cls: float = 1.0
    lambda_al: float = 1.0

    # Upper bounds that catch absurd values (a typo of 10**9) before any allocation.
    _WIDTH_LIMIT = 1 << 16

    def __post_init__(self) -> None:
        for name in ("visual_dim", "text_dim", "dim", "hidden"):
            _positive_int(name, getattr(self, name), self._WIDTH_LIMIT)
        _positive_int("num_classes", self.num_classes, 1 << 20)
        _positive_int("layers", self.layers, 64)
        _positive_int("diffusion_steps", self.diffusion_steps, 100_000)
        _positive_int("learner_steps", self.learner_steps, self.diffusion_steps)
        _positive_int("translator_steps", self.translator_steps, self.diffusion_steps)
        if self.dim % 2:
            raise ValueError(f"SeDAConfig.dim must be even (sin/cos time embedding), got {self.dim}")
        _nonneg_float("center_momentum", self.center_momentum, at_most=1.0)
        _nonneg_float("center_temperature", self.center_temperature, positive=True)
        for name in ("lambda_sc", "lambda_aux", "lambda_cls", "lambda_al"):
            _nonneg_float(name, getattr(self, name))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SeDAConfig":
        if not isinstance(data, dict):
            raise TypeError(f"config must be a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SeDAConfig fields: {unknown}")
        return cls(**data)
