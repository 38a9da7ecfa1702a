"""SeDA hyper-parameters (the notation table of docs/math.md), validated on construction."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .validation import check_int, check_number


@dataclass(frozen=True)
class SeDAConfig:
    """Shapes and weights of one SeDA model (docs/math.md, "Notation"). Frozen: a model's widths are
    fixed when it is built (``dataclasses.replace(config, ...)`` makes a changed copy).

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
        def field(name):
            return f"SeDAConfig.{name}", getattr(self, name)

        def integer(name, maximum):  # stored as a plain int (a numpy integer would not serialise to JSON)
            object.__setattr__(self, name, check_int(*field(name), maximum=maximum))

        for name in ("visual_dim", "text_dim", "dim", "hidden"):
            integer(name, self._WIDTH_LIMIT)
        integer("num_classes", 1 << 20)
        integer("layers", 64)
        integer("diffusion_steps", 100_000)
        integer("learner_steps", self.diffusion_steps)
        integer("translator_steps", self.diffusion_steps)
        if self.dim % 2:
            raise ValueError(f"SeDAConfig.dim must be even (sin/cos time embedding), got {self.dim}")
        check_number(*field("center_momentum"), maximum=1.0)
        check_number(*field("center_temperature"), positive=True)
        for name in ("lambda_sc", "lambda_aux", "lambda_cls", "lambda_al"):
            check_number(*field(name))

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
