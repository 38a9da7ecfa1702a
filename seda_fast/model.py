"""The public module: :class:`SeDA` owns the parameters and dispatches to a backend.

The math lives in :mod:`seda_fast.reference` (eager) and the fused ops; a backend
(:mod:`seda_fast.backends`) runs it. This layer only checks inputs, picks the backend and holds
state (parameters, centers, training stage).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from . import backends, reference
from . import validation as val
from .ops import runtime
from .config import SeDAConfig
from .nvtx import nvtx_range

BACKENDS = ("eager", "triton", "auto")
FUSED_IMPLS = ("auto",) + backends.FUSED_IMPLS
# the first weight of each part (:attr:`SeDA.STAGE1_PARTS`, :attr:`SeDA.STAGE2_PARTS`): a part cast
# on its own (``model.head.half()``) shows in these (a layer inside a part cast alone does not), read
# through the module dicts where they hold them (``getattr`` on a module costs microseconds each)
_DTYPE_PROBES = tuple(tuple(path.split(".")) for path in (
    "head.weight", "visual_proj.linear.weight", "learner.in_x.weight", "readout.weight", "aux_visual.weight",
    "text_proj.linear.weight", "translator.in_x.weight", "pfin.p_m.weight", "aux_text.weight"))


class Projector(nn.Module):
    """``LayerNorm(x W + b)``: ``[N, in_dim] -> [N, dim]``."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, dim)
        self.norm = nn.LayerNorm(dim)


class Denoiser(nn.Module):
    """Weights of ``D(x_t, t, c)``: ``in_x`` = W_x, ``in_c`` = (W_c, b_a), ``time_in``/``time_out`` =
    the time MLP (d -> H -> H), ``hidden`` = the L-1 residual layers, ``out`` = (W_o, b_o)."""

    def __init__(self, dim: int, hidden: int, layers: int):
        super().__init__()
        self.in_x = nn.Linear(dim, hidden, bias=False)
        self.in_c = nn.Linear(dim, hidden)
        self.time_in = nn.Linear(dim, hidden)
        self.time_out = nn.Linear(hidden, hidden)
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers - 1))
        self.out = nn.Linear(hidden, dim)


class PFIN(nn.Module):
    """Progressive Feature Interaction Network: ``p_m`` = W_pm, ``p_u`` = (W_pu, b_p), ``down`` =
    (W_pd, b_pd), ``g_m`` = W_gm, ``g_u`` = (W_gu, b_g)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.p_m = nn.Linear(dim, hidden, bias=False)
        self.p_u = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.g_m = nn.Linear(dim, dim, bias=False)
        self.g_u = nn.Linear(dim, dim)


class SeDA(nn.Module):
    """SeDA classifier (docs/math.md): ``SeDA(config)(visual [B, Dv]) -> logits [B, C]``.

    ``backend``: ``"eager"`` (the reference), ``"triton"`` (fused kernels) or ``"auto"``; it can
    be changed on a live model and does not change the state_dict. ``fused_impl`` picks the fused
    inference implementation (:attr:`fused_impl`) and the fused training's;
    ``activation_memory`` the stage-2 unroll's activation policy (:attr:`activation_memory`). ``check_inputs=True``
    adds the NaN/Inf checks that cost a device sync. A new model is in stage 1 (see :meth:`set_stage`).
    """

    STAGE1_PARTS = ("visual_proj", "learner", "readout", "aux_visual")
    STAGE2_PARTS = ("text_proj", "translator", "pfin", "head", "aux_text")

    def __init__(self, config: SeDAConfig, backend: str = "auto", check_inputs: bool = False,
                 activation_memory: int | str | None = None):
        super().__init__()
        if not isinstance(config, SeDAConfig):
            raise TypeError(f"config must be a SeDAConfig, got {type(config).__name__}")
        self.config = config
        d, H, C = config.dim, config.hidden, config.num_classes
        self.visual_proj = Projector(config.visual_dim, d)
        self.learner = Denoiser(d, H, config.layers)
        self.readout = nn.Linear(H, d, bias=False)
        self.aux_visual = nn.Linear(d, C)
        self.text_proj = Projector(config.text_dim, d)
        self.translator = Denoiser(d, H, config.layers)
        self.pfin = PFIN(d, H)
        self.head = nn.Linear(d, C)
        self.aux_text = nn.Linear(d, C)
        self.register_buffer("centers", torch.zeros(C, d))
        self.register_buffer("centers_initialized", torch.zeros(C, dtype=torch.bool))
        self.backend = backend
        self.fused_impl = "auto"
        self.activation_memory = activation_memory
        self.check_inputs = bool(check_inputs)
        self.set_stage(1)

    # ------------------------------------------------------------------ state
    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {value!r}")
        self._backend = value

    @property
    def fused_impl(self) -> str:
        """Which fused inference runs on the triton backend: ``"auto"`` (the cost model's pick,
        ``seda_fast.backends.AUTO_IMPL``), ``"rowblock"``, ``"phases"`` or ``"persistent"`` (CUDA
        only); see :func:`seda_fast.fused_impls`. Training runs stage 1's diffusion term and
        stage 2's unroll, diffusion term and ``s`` as row blocks under ``"rowblock"`` and as phases
        otherwise (:func:`seda_fast.backends.training_impl`).
        It changes neither the state_dict nor the numbers beyond the dtype's rounding. (A whole
        model pickled before the knob existed reads "auto".)"""
        return getattr(self, "_fused_impl", "auto")

    @fused_impl.setter
    def fused_impl(self, value: str) -> None:
        if value not in FUSED_IMPLS:
            raise ValueError(f"fused_impl must be one of {FUSED_IMPLS}, got {value!r}")
        self._fused_impl = value

    @property
    def activation_memory(self) -> int | str | None:
        """What the fused stage-2 unroll (phases) keeps for its backward: ``None`` (default) every
        step's activations (fastest; ``python -m seda_fast memory`` shows the bytes), ``"save"`` the
        same, ``"recompute"`` only the per-step states (each step's forward runs again in the
        backward), or a budget in bytes: save when the saved activations fit in it, else recompute
        (:func:`seda_fast.backends.activation_policy`). The row-block unroll always recomputes. It
        changes neither the state_dict nor the numbers (recomputed values are bitwise the saved ones)."""
        return getattr(self, "_activation_memory", None)

    @activation_memory.setter
    def activation_memory(self, value) -> None:
        ok = value is None or value in backends.ACTIVATION_POLICIES or (
            isinstance(value, int) and not isinstance(value, bool) and value >= 0)
        if not ok:
            raise ValueError(f"activation_memory must be None, one of {backends.ACTIVATION_POLICIES} or a "
                             f"budget in bytes (an int >= 0), got {value!r}")
        self._activation_memory = value

    @property
    def stage(self) -> int:
        return self._stage

    def set_stage(self, stage: int) -> "SeDA":
        """Stage 1 trains only the projector ``P_v``, the Learner, ``W_r`` and the auxiliary visual
        classifier; stage 2 only ``P_t``, the Translator, PFIN, the head and the auxiliary text
        classifier. Everything else gets ``requires_grad=False``. Re-wrap DDP after a change."""
        stage = val.check_int("stage", stage, 1, 2)
        self._stage = stage
        trained = self.STAGE1_PARTS if stage == 1 else self.STAGE2_PARTS
        for name in self.STAGE1_PARTS + self.STAGE2_PARTS:
            getattr(self, name).requires_grad_(name in trained)
        return self

    @property
    def device(self) -> torch.device:
        return self.centers.device

    def _param_dtype(self) -> torch.dtype:
        """The parameters' one dtype (inputs are cast to it); a part cast on its own is refused."""
        dtype, first = None, None
        for path in _DTYPE_PROBES:
            module = self
            for name in path[:-1]:  # a wrapped part (torch.compile, an adapter) is reached by getattr
                child = module._modules.get(name)
                module = getattr(module, name) if child is None else child
            weight = module._parameters.get(path[-1])
            if weight is None:  # pruned or parametrized (weight_norm): a computed attribute
                weight = getattr(module, path[-1])
            if dtype is None:
                dtype, first = weight.dtype, path
            elif weight.dtype != dtype:
                raise TypeError(f"the model's parameters must share one dtype: {'.'.join(first)} is {dtype} but "
                                f"{'.'.join(path)} is {weight.dtype}; cast the whole model (model.to(dtype))")
        return dtype

    def resolved_backend(self, device: torch.device) -> str:
        """The backend a call on ``device`` uses: ``"auto"`` picks triton for CUDA tensors (when
        triton is installed) and eager otherwise; ``"triton"`` raises a clear error where the
        kernels cannot run (CPU without ``TRITON_INTERPRET=1``)."""
        if self._backend == "eager":
            return "eager"
        if self._backend == "auto":
            return "triton" if device.type == "cuda" and backends.TRITON.available(device) else "eager"
        backends.TRITON.require(device)
        return "triton"

    def _inference_impl(self, visual: torch.Tensor):
        """The fused inference chain has no backward (training goes through the losses): while
        autograd would record (grad mode on and a parameter or the input requiring grad), "auto"
        runs eager and "triton" says so."""
        if self.resolved_backend(visual.device) == "eager":
            return backends.EAGER
        if torch.is_grad_enabled() and (visual.requires_grad or any(p.requires_grad for p in self.parameters())):
            if self._backend == "auto":
                return backends.EAGER
            raise RuntimeError(
                "backend='triton' inference has no backward: call it under torch.no_grad() or "
                "torch.inference_mode(), train through learner_loss/translator_loss (or forward with "
                "labels), or use backend='eager'/'auto' when gradients of the logits are needed")
        return backends.TRITON

    def _training_impl(self, device: torch.device):
        """``"triton"`` trains with the fused pieces (:class:`seda_fast.backends.FusedPieces`);
        ``"auto"`` and ``"eager"`` train with the reference (``"auto"`` keeps eager training until
        the fused training path has been measured on a GPU; see README)."""
        if self._backend == "triton":
            backends.TRITON.require(device)
            return backends.TRITON
        return backends.EAGER

    # ------------------------------------------------------------------ input handling
    @contextlib.contextmanager
    def unchecked_inputs(self):
        """Within the block the per-call NaN/Inf input checks are off (each reads the data back to the
        host), for a caller that checked its data once; ``check_inputs`` is restored after."""
        checks, self.check_inputs = self.check_inputs, False
        try:
            yield self
        finally:
            self.check_inputs = checks

    def input_check_dtype(self, dtype: torch.dtype | None = None) -> torch.dtype:
        """The dtype whose range ``check_inputs`` holds inputs to: the narrower of the parameters'
        (``dtype``, else read) and, where autocast is on for the model's device, autocast's."""
        dtype = dtype or self._param_dtype()
        fast = runtime.autocast_dtype(self.device)
        return fast if fast is not None and torch.finfo(fast).max < torch.finfo(dtype).max else dtype

    def _cast_input(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """``x`` (shape-checked) in the parameters' dtype, its values checked first in
        ``check_inputs`` mode."""
        dtype = self._param_dtype()
        if self.check_inputs:
            val.check_finite(name, x, self.input_check_dtype(dtype))
        return x.to(dtype)

    def _visual(self, visual) -> torch.Tensor:
        val.check_features("visual", visual, self.config.visual_dim, self.device)
        return self._cast_input("visual", visual)

    def _text(self, text, batch: int, text_kind: str):
        C, Dt = self.config.num_classes, self.config.text_dim
        val.text_is_per_class(text_kind, None, C)  # a bad text_kind fails first
        if text is None:
            raise ValueError(f"stage-2 training needs text: [num_classes={C}, {Dt}] class texts "
                             f"or [B={batch}, {Dt}] per-sample texts")
        rows = text.shape[0] if isinstance(text, torch.Tensor) and text.dim() == 2 else None
        per_class = val.text_is_per_class(text_kind, rows, C)
        if rows is not None and rows != (C if per_class else batch):
            asked = {"auto": "", "class": " (text_kind='class' asks for the first)",
                     "sample": " (text_kind='sample' asks for the second)"}[text_kind]
            raise ValueError(f"text must have shape [{C}, {Dt}] (class texts, one row per class) or "
                             f"[{batch}, {Dt}] (per-sample texts, one row per sample){asked}, got {list(text.shape)}")
        val.check_features("text", text, Dt, self.device, batch=C if per_class else batch)
        return self._cast_input("text", text), per_class

    def _noise(self, noise, batch: int):
        if noise is None:
            return None
        val.check_features("noise", noise, self.config.dim, self.device, batch=batch)
        return self._cast_input("noise", noise).contiguous()  # (the eager chain casts it to this dtype too)

    def _labels(self, labels, batch: int) -> torch.Tensor:
        val.check_labels(labels, batch, self.config.num_classes, self.device)
        return labels.long().contiguous()

    def _check_stage(self, loss: str, stage: int) -> None:
        """In training mode a loss belongs to its stage: ``learner_loss`` would move the centers that
        stage 2 keeps frozen, and ``translator_loss`` in stage 1 trains nothing (its parameters are
        frozen). In eval mode either loss may be computed for monitoring (no center update)."""
        if self.training and self._stage != stage:
            raise RuntimeError(
                f"{loss} is the stage-{stage} loss but the model is in stage {self._stage}: call "
                f"model.set_stage({stage}) first (then re-create the optimizer and any DDP wrapper), or "
                f"model.eval() to compute it for evaluation only (eval mode never updates the centers)")

    # ------------------------------------------------------------------ API
    def learner_loss(self, visual, labels, generator=None, return_parts: bool = False):
        """Stage-1 loss ``L_1`` (a scalar). In training mode it also updates the centers and needs
        stage 1; in eval mode it can be computed in either stage and leaves the centers alone."""
        self._check_stage("learner_loss", 1)
        val.check_generator(generator, self.device)
        v = self._visual(visual)
        y = self._labels(labels, v.shape[0])
        impl = self._training_impl(v.device)
        with nvtx_range("seda/stage1_loss"):
            loss, parts = reference.learner_loss(self, v, y, generator, update=self.training,
                                                 pieces=impl.pieces)
        return (loss, parts) if return_parts else loss

    def translator_loss(self, visual, labels, text, generator=None, text_kind: str = "auto",
                        return_parts: bool = False):
        """Stage-2 loss ``L_2`` (a scalar). ``text`` is ``[C, Dt]`` class texts or ``[B, Dt]``
        per-sample texts; ``text_kind="auto"`` reads ``[C, Dt]`` as class texts, so pass
        ``"sample"`` when a batch of per-sample texts happens to have exactly C rows. In training
        mode it needs stage 2 (:meth:`set_stage`); in eval mode it can be computed in either stage."""
        self._check_stage("translator_loss", 2)
        val.check_generator(generator, self.device)
        v = self._visual(visual)
        y = self._labels(labels, v.shape[0])
        t, per_class = self._text(text, v.shape[0], text_kind)
        impl = self._training_impl(v.device)
        with nvtx_range("seda/stage2_loss"):
            loss, parts = reference.translator_loss(self, v, y, t, per_class, generator,
                                                    pieces=impl.pieces)
        return (loss, parts) if return_parts else loss

    @torch.no_grad()
    def semantic(self, visual) -> torch.Tensor:
        """The Learner's semantic feature ``s [B, d]`` (zero start noise, deterministic)."""
        v = self._visual(visual)
        with nvtx_range("seda/semantic"):
            return self._inference_impl(v).semantic(self, v)

    def infer(self, visual, noise=None):
        """Inference chain with its intermediates: ``(logits [B, C], s [B, d], m [B, d])``."""
        v = self._visual(visual)
        n = self._noise(noise, v.shape[0])
        with nvtx_range("seda/infer"):
            return self._inference_impl(v).infer(self, v, n)

    def forward(self, visual, labels=None, text=None, noise=None, generator=None, text_kind: str = "auto"):
        """Without ``labels``: ``logits [B, C]`` (no text needed; ``noise`` is the Translator's
        ``[B, d]`` start noise, ``None`` = zeros). With ``labels``: the current stage's loss (stage 1
        reads no ``text``, so a loop may pass it in both stages; ``generator`` seeds the loss's
        draws, which do not include ``noise``)."""
        val.text_is_per_class(text_kind, None, self.config.num_classes)  # a bad text_kind fails in any call
        if labels is None:
            if generator is not None:
                raise ValueError("generator= seeds the training losses' random draws (pass labels); inference "
                                 "draws nothing: its start noise is zeros or noise=")
            return self.infer(visual, noise)[0]
        if noise is not None:
            raise ValueError("noise= is inference's start noise (call without labels); the losses draw their own "
                             "(seed them with generator=)")
        if self._stage == 1:
            return self.learner_loss(visual, labels, generator)
        return self.translator_loss(visual, labels, text, generator, text_kind=text_kind)
