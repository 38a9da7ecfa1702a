"""The random-t diffusion term's denoiser as phases: one denoiser pass over all rows, forward and backward.

``x_t [B, d]``, ``cond [B, H]`` (the caller's ``c W_c + b_a`` plus the rows' time embeddings
``e(t_b)``) -> ``x0_hat [B, d]`` and the input layer's pre-activation ``a [B, H]``, and the
backward from ``dL/dx0_hat`` and, when ``a`` has a consumer (stage 1's center constraint),
``dL/da``. The math is one step of the stage-2 unroll without PFIN, so it runs on
:func:`seda_fast.kernels.unroll_phases.unroll_phase_kernel` (its phase bodies, tiles and
weight-gradient reduction) with a schedule of its own::

    forward   A, R_0 .. R_{L-2}, O                   L + 1 phases (z, h kept; a, x0_hat returned)
    backward  BO, BR_{L-2} .. BR_0, W                L + 1 phases

With a target, ``O``'s epilogue also forms the loss ``mean (x0_hat - target)^2`` (one fp32 share
per tile) and its gradient. ``BO``/``BR`` form ``gh``, the residual layers' ``gz`` and, at the
input layer, ``ga = gh SiLU'(a)`` plus the caller's ``dL/da`` when it sends one (summed in fp32;
the sum, ``dL/da`` in full, is ``dL/dcond``); ``W`` reduces ``dW_x``, ``dW_l``, ``dW_o`` and their
bias column sums over the rows (row splits into fp32 partials summed in a fixed order, no
atomics). There is no ``dL/dx_t``: the diffusion target is under stop-gradient and the noise is a
random draw. The time-embedding row the phase kernel adds is a zero row (``cond`` carries
``e(t_b)``).
"""
from __future__ import annotations

import math

import torch
import triton

from ._heuristics import check_matrix
from .translator_unroll import check_denoiser
from .unroll_phases import (B_O, B_R, F_A, F_O, F_R, W_GRAD, PhaseTiles, _Call, _span, _views, call_tiles,
                            check_flat_acts, row_tiles, schedule_table, split_grads, wgrad_plan)

WGRAD_JOBS = 3  # w_x, w_hidden, w_out: the phase kernel's first three weight-gradient jobs
_ZEROS: dict = {}


def build_schedule(layers: int) -> tuple[list[tuple], list[tuple]]:
    """``(forward rows, backward rows)`` in the phase kernel's row format (see the module doc)."""
    nh = layers - 1
    fwd = [(F_A, 0, 0, 1, 0, 0, 0, 0)] + [(F_R, 0, lay, 1, 0, 0, 0, 0) for lay in range(nh)] \
        + [(F_O, 0, nh, 1, 0, 0, 0, 0)]
    bwd = [(B_O, 0, nh, 1, 0, 0, 0, 0)] + [(B_R, 0, lay, 1, 0, 0, 0, 0) for lay in reversed(range(nh))] \
        + [(W_GRAD, 0, 0, 1, 1, 0, 0, 0)]  # W of one step
    return fwd, bwd


def phase_counts(layers: int) -> tuple[int, int]:
    """``(forward, backward)`` launches: ``L + 1`` each."""
    return layers + 1, layers + 1


def _act_shapes(B, d, H, nh):
    return dict(z=(max(nh, 1), 1, B, H), h=(nh + 1, 1, B, H))


def saved_numel(B: int, d: int, H: int, layers: int) -> int:
    """Values of the flat ``acts`` the forward keeps for the backward (the residual pre-activations
    and every ``h``; ``a`` and ``x0_hat`` are outputs of their own, and the backward reads ``a``)."""
    return sum(math.prod(s) for s in _act_shapes(B, d, H, layers - 1).values())


def _zero_tables(H, dtype, device):
    """The zero time-embedding row ``[1, H]`` and DDIM row ``[1, 2]`` the phase kernel reads, made once
    per (H, dtype, device): no kernel writes them, and a step issues no allocations for them. Not
    cached when first asked for inside a CUDA-graph capture (their zero fill would exist only in
    that graph)."""
    key = (H, dtype, device)
    tables = _ZEROS.get(key)
    if tables is None:
        tables = (torch.zeros(1, H, dtype=dtype, device=device), torch.zeros(1, 2, dtype=torch.float32, device=device))
        if not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
            _ZEROS[key] = tables
    return tables


def _call(x_t, cond, weights, nh, acts, grads, splits, tiles, wide, pdl, graph, x0_loss=None):
    """The phase kernel's arguments for this schedule: one step (K = 1, a zero time row), no PFIN
    (its weights and buffers are stand-ins no phase here reads), ``ga`` stored in full
    (``GA_TOTAL``; ``GA_SEED`` when ``grads["gcond"]`` holds the caller's ``dL/da``); ``x0_loss``
    ``(target, lp)`` with ``grads["gx0"]`` for the forward's loss (``X0_LOSS``); ``graph`` as the
    launchers'."""
    e_row, ddim = _zero_tables(cond.shape[1], cond.dtype, cond.device)
    stand_in = weights[0]
    full = tuple(weights) + (stand_in,) * 8
    act = dict(acts, p=x_t, sp=x_t, g=x_t, dl=x_t)
    act.setdefault("x0", x_t)  # the backward writes no x0_hat: any pointer stands in
    if grads is not None and "part" in grads:  # the PFIN jobs' fp32 partials: stand-ins past the first WGRAD_JOBS
        grads = dict(grads, part=list(grads["part"]) + [grads["part"][0]] * (6 - WGRAD_JOBS))
    xs = x_t.unsqueeze(0)
    seeded = grads is not None and grads.get("gcond") is not None
    return _Call(xs, xs, cond, e_row, ddim, full, nh, act, grads, 1, splits, tiles, pdl, wgrad_jobs=WGRAD_JOBS,
                 wide=wide, ga_total=True, ga_seed=seeded, x0_loss=x0_loss, graph=graph)


def denoise_phases_forward(x_t, cond, w_x, w_hidden, b_hidden, w_out, b_out, *, target=None,
                           tiles: PhaseTiles | None = None, wide: PhaseTiles | None = None, pdl: bool = False,
                           graph: bool = False):
    """``(x0_hat [B, d], a [B, H], acts)`` in the weights' dtype: the denoiser's output, its input
    layer's pre-activation ``a = x_t W_x + cond`` and the flat activations
    :func:`denoise_phases_backward` reads beside ``a``. ``x_t [B, d]``, ``cond [B, H]`` in the
    weights' dtype; weights as :func:`seda_fast.kernels.translator_unroll_forward`'s first five.
    With ``target [B, d]`` (any float dtype) also ``loss`` (0-dim fp32, ``mean (x0_hat -
    target)^2`` from x0_hat before its rounding) and ``grad_x0`` (``dloss/dx0_hat [B, d]``, the
    weights' dtype), formed in the output phase's epilogue: the return is then
    ``(x0_hat, a, acts, loss, grad_x0)``. ``pdl``, ``graph``: as
    :func:`seda_fast.kernels.unroll_phases.unroll_phases_forward`'s."""
    weights = (w_x, w_hidden, b_hidden, w_out, b_out)
    B, d, H, nh = _check_args(x_t, cond, weights)
    if target is not None:
        check_matrix("target", target, B, d, None, x_t.device, batch_rows=True)
    flat = torch.empty(saved_numel(B, d, H, nh + 1), dtype=w_x.dtype, device=x_t.device)
    x0_hat = torch.empty(B, d, dtype=w_x.dtype, device=x_t.device)
    a = torch.empty(B, H, dtype=w_x.dtype, device=x_t.device)
    acts = dict(_views(flat, _act_shapes(B, d, H, nh)), a=a, x0=x0_hat)
    fwd, _, table = schedule_table(build_schedule, (nh + 1,), x_t.device)
    grads, x0_loss = None, None
    if target is not None:  # one fp32 share of the loss per output-phase tile, summed in a fixed order
        tiles, wide = call_tiles(tiles, wide, B, d, H, w_x.dtype)
        o = row_tiles(fwd[-1], B, d, H, nh, 1, tiles, wide)
        lp = torch.empty(triton.cdiv(B, o.BM) * triton.cdiv(d, o.BN), dtype=torch.float32, device=x_t.device)
        grads, x0_loss = dict(gx0=torch.empty(B, d, dtype=w_x.dtype, device=x_t.device)), (target.contiguous(), lp)
    _call(x_t, cond, weights, nh, acts, grads, 1, tiles, wide, pdl, graph, x0_loss).run(table, fwd, 0)
    if target is None:
        return x0_hat, a, flat
    return x0_hat, a, flat, x0_loss[1].sum(), grads["gx0"]


def denoise_phases_backward(grad_x0, x_t, acts, a, cond, w_x, w_hidden, b_hidden, w_out, b_out, *,
                            grad_a=None, tiles: PhaseTiles | None = None, wide: PhaseTiles | None = None,
                            pdl: bool = False, flat: bool = False, graph: bool = False):
    """``(grad_cond [B, H], grad_w_x, grad_w_hidden, grad_b_hidden, grad_w_out, grad_b_out)`` in the
    weights' dtype from ``grad_x0 = dL/dx0_hat [B, d]``, the forward's ``a`` and ``acts``, and, when
    a consumer of ``a`` sends one, ``grad_a = dL/da [B, H]``: views of one buffer laid out as
    :func:`grad_layout`, which ``flat=True`` returns instead. The weights' are accumulated in fp32
    in a fixed order (bitwise reproducible) in one buffer and cast once. ``L + 1`` launches. The input layer's phase adds ``grad_a`` to its own
    ``ga`` (in fp32) and stores the sum, ``dL/da`` in full, which is ``dL/dcond`` and what the
    weight-gradient phase reduces into ``dW_x``."""
    weights = (w_x, w_hidden, b_hidden, w_out, b_out)
    B, d, H, nh = _check_args(x_t, cond, weights)
    dtype, device = w_x.dtype, x_t.device
    check_matrix("grad_x0", grad_x0, B, d, None, device, batch_rows=True)
    check_matrix("a", a, B, H, dtype, device, batch_rows=True)
    if grad_a is not None:
        check_matrix("grad_a", grad_a, B, H, None, device, batch_rows=True)
    check_flat_acts(acts, saved_numel(B, d, H, nh + 1), dtype, device)
    tiles, wide = call_tiles(tiles, wide, B, d, H, dtype)
    _, splits = wgrad_plan(dtype, B, d, H, nh, tiles, WGRAD_JOBS)
    f32 = dict(device=device, dtype=torch.float32)
    layout = grad_layout(B, d, H, nh)
    out = torch.empty(sum(math.prod(shape) for _, shape in layout), dtype=dtype, device=device)
    # the fp32 results (weights, then the column sums of ga, gz, gx0) in one buffer laid out as the
    # rest of out, cast once at the end; in fp32 that is out itself
    cast = dtype != torch.float32
    ws = torch.empty(out.numel() - B * H, **f32) if cast else _span(out, layout, "w_x", "b_out")
    keep = ("w_x", "w_hidden", "w_out") + (("ga_sum", "b_hidden", "b_out") if splits > 1 else ())
    shapes = dict(layout[1:])
    w_at = _views(ws, shapes, only=keep)
    sums = _span(ws, layout[1:], "ga_sum", "b_out")
    jobs = (("w_x", 1), ("w_hidden", nh), ("w_out", 1))  # with one row split, a partial is its gradient
    part = [w_at[n] if splits == 1 else torch.empty(lay, splits, *shapes[n][-2:], **f32) for n, lay in jobs]
    g = dict(gh=torch.empty(B, H, **f32),
             gcond=None if grad_a is None else grad_a.contiguous(),  # read by the input phase (GA_SEED)
             ga=_span(out, layout, "cond"), gz=torch.empty(max(nh, 1), B, H, dtype=dtype, device=device),
             gx0=grad_x0 if grad_x0.dtype == dtype else grad_x0.to(dtype),
             cs=sums if splits == 1 else torch.empty(sums.numel() * splits, **f32),
             part=[p if p.numel() else torch.empty(1, **f32) for p in part])
    _, bwd, table = schedule_table(build_schedule, (nh + 1,), device)
    fwd_len = len(table) - len(bwd)
    act = dict(_views(acts, _act_shapes(B, d, H, nh)), a=a)
    _call(x_t, cond, weights, nh, act, g, splits, tiles, wide, pdl, graph).run(table, bwd, fwd_len)
    if splits > 1:  # the row splits' partials and column sums summed in a fixed order, into their places
        for p, (n, _) in zip(part, jobs):
            if p.numel():
                torch.sum(p, 1, out=w_at[n].view(p.shape[0], *p.shape[2:]))
        cs = torch.split(g["cs"], [n * splits for n in (H, nh * H, d)])
        for c, n, width in zip(cs, ("ga_sum", "b_hidden", "b_out"), (H, H, d)):
            torch.sum(c.view(-1, splits, width), 1, out=w_at[n].view(-1, width))
    if cast:
        _span(out, layout, "w_x", "b_out").copy_(ws)
    return out if flat else split_grads(out, layout, GRAD_ORDER)


GRAD_ORDER = ("cond", "w_x", "w_hidden", "b_hidden", "w_out", "b_out")  # denoise_phases_backward's results


def grad_layout(B: int, d: int, H: int, nh: int) -> list[tuple[str, tuple]]:
    """``(name, shape)`` of each part of the flat buffer :func:`denoise_phases_backward` fills: the
    kernel's ``dL/dcond``, the weight gradients, then the column sums the weight-gradient phase
    writes (``ga_sum``, the input layer's, has no weight to go to)."""
    return [("cond", (B, H)), ("w_x", (H, d)), ("w_hidden", (nh, H, H)), ("w_out", (d, H)), ("ga_sum", (H,)),
            ("b_hidden", (nh, H)), ("b_out", (d,))]


def _check_args(x_t, cond, weights):
    """Shapes, dtypes and devices (before any launch): ``(B, d, H, n_hidden)``; ``x_t`` in the weights' dtype."""
    B, d, H, nh = check_denoiser(x_t, cond, weights, "x_t")
    check_matrix("x_t", x_t, B, d, weights[0].dtype, x_t.device, batch_rows=True)
    return B, d, H, nh
