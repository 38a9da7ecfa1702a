"""Fused denoiser for training (issue 4 building block): ``training_ops.denoiser_train`` forward and
every gradient against ``reference.denoise`` and its autograd.

On CPU the kernels run in Triton's interpreter (tests/conftest.py) on 1-27 program grids; the
sm_90a compile check runs in a subprocess without the interpreter (it cannot compile).
"""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from seda_fast import fused, model, reference, training_ops as ops
from helpers import (assert_compiled_step_matches, assert_flash_rule, assert_matches_reference,
                     assert_sm90_clean, compile_rows_in_subprocess, rel)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
K = fused.kernels()
NAMES = ["x0_hat", "a", "grad x_t", "grad e_t", "grad cond", "grad w_x", "grad w_hidden", "grad b_hidden",
         "grad w_out", "grad b_out"]


def _problem(B, d, H, L, seed=0, dtype=torch.float32):
    """``(inputs, weights, upstream)``: ``x_t, e_t, cond``; ``w_x, w_hidden, b_hidden, w_out, b_out``
    (nn.Linear's init, fresh per seed); upstream gradients of ``x0_hat [B, d]`` and ``a [B, H]``."""
    torch.manual_seed(seed)
    den = model.Denoiser(d, H, L)
    with torch.no_grad():  # non-zero biases so their gradient paths matter
        for layer in den.hidden:
            layer.bias.normal_(0.0, 0.5)
        den.out.bias.normal_(0.0, 0.5)
    g = torch.Generator().manual_seed(seed + 1)
    inputs = [torch.randn(B, d, generator=g), torch.randn(B, H, generator=g), torch.randn(B, H, generator=g)]
    hidden = [(l.weight.detach(), l.bias.detach()) for l in den.hidden]
    w_hidden = torch.stack([w for w, _ in hidden]) if hidden else torch.empty(0, H, H)
    b_hidden = torch.stack([b for _, b in hidden]) if hidden else torch.empty(0, H)
    weights = [den.in_x.weight.detach(), w_hidden, b_hidden, den.out.weight.detach(), den.out.bias.detach()]
    upstream = [torch.randn(B, d, generator=g), torch.randn(B, H, generator=g)]
    cast = lambda ts: [t.to(DEVICE, dtype).contiguous() for t in ts]  # noqa: E731
    return cast(inputs), cast(weights), cast(upstream)


def _eager_denoise(x_t, e_t, cond, w_x, w_hidden, b_hidden, w_out, b_out):
    """``reference.denoise`` on a Denoiser-shaped namespace holding these exact tensors."""
    lin = lambda w, b=None: SimpleNamespace(weight=w, bias=b)  # noqa: E731
    den = SimpleNamespace(in_x=lin(w_x), out=lin(w_out, b_out),
                          hidden=[lin(w_hidden[i], b_hidden[i]) for i in range(w_hidden.shape[0])])
    return reference.denoise(den, x_t, e_t, cond)


def _run(fn, inputs, weights, upstream, dtype=None):
    """Outputs and the gradients of all 8 arguments of ``fn`` for ``<x0_hat, gx0> + <a, ga>``."""
    args = [t.detach().to(dtype or t.dtype).clone().requires_grad_() for t in inputs + weights]
    x0, a = fn(*args)
    ((x0 * upstream[0].to(x0.dtype)).sum() + (a * upstream[1].to(a.dtype)).sum()).backward()
    return [x0.detach(), a.detach()] + [t.grad for t in args]


@pytest.mark.parametrize("B,d,H,L", [(33, 48, 80, 3), (1, 38, 37, 1), (17, 38, 80, 2), (33, 38, 37, 2),
                                     (17, 48, 37, 1)])
def test_fp32_parity_with_reference_autograd(B, d, H, L):
    """Forward and all 8 gradients within 1e-5 of the fp32 reference's autograd and of the fp64 one."""
    inputs, weights, upstream = _problem(B, d, H, L, seed=B + L)
    out = _run(ops.denoiser_train, inputs, weights, upstream)
    ref = _run(_eager_denoise, inputs, weights, upstream)
    ref64 = _run(_eager_denoise, inputs, weights, upstream, torch.float64)
    assert_matches_reference(NAMES, out, ref, ref64, [None, None] + inputs + weights, L)


def test_module_entry_point_and_broadcast_time_row():
    """``training_ops.denoise(den, ...)`` = ``reference.denoise`` incl. the module's parameter grads,
    with ``e_t`` an ``[H]`` row (broadcast) and only ``x0_hat`` used (no upstream gradient for ``a``)."""
    torch.manual_seed(3)
    B, d, H = 17, 38, 37
    dens = [model.Denoiser(d, H, 2).to(DEVICE) for _ in range(2)]
    dens[1].load_state_dict(dens[0].state_dict())
    g = torch.Generator().manual_seed(4)
    x, e, c = torch.randn(B, d, generator=g), torch.randn(H, generator=g), torch.randn(B, H, generator=g)
    grads = []
    for fn, den in ((ops.denoise, dens[0]), (reference.denoise, dens[1])):
        xs = [t.to(DEVICE).requires_grad_() for t in (x, e, c)]
        x0, _ = fn(den, *xs)
        x0.pow(2).sum().backward()
        grads.append([x0.detach()] + [t.grad for t in xs] + [p.grad for p in den.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) == 4 + 5
    for i, (o, r) in enumerate(zip(*grads)):
        assert o.shape == r.shape and rel(o, r) < 1e-5, (i, rel(o, r))


def test_fp16_flash_attention_rule():
    """Kernel error <= 2 x (torch fp16 error) + atol, both vs the fp32 reference on the same rounded
    inputs; atol = 2^-10 max|ref| (one fp16 ulp at the tensor's scale: the final store's rounding)."""
    inputs, weights, upstream = _problem(33, 48, 80, 3, seed=5, dtype=torch.float16)
    out = _run(ops.denoiser_train, inputs, weights, upstream)
    ref16 = _run(_eager_denoise, inputs, weights, upstream)
    ref32 = _run(_eager_denoise, inputs, weights, upstream, torch.float32)
    for name, o, r16, r32 in zip(NAMES, out, ref16, ref32):
        assert o.dtype == torch.float16, name
        assert_flash_rule(name, o, r16, r32, 2.0 ** -10 * r32.abs().max().item())


@pytest.mark.filterwarnings("ignore:Input #.* requires gradient and is not a double")
def test_finite_difference_gradcheck_fp32():
    """torch.autograd.gradcheck of the op in fp32 (the kernels take fp32/fp16/bf16, not fp64) on a tiny
    L = 2 problem, all 8 arguments, both outputs. Central differences with eps = 1e-2 on outputs of
    size ~1: truncation ~ eps^2 |f'''| ~ 1e-4, rounding ~ ulp(f) / eps ~ 1e-5, so atol = 2e-3 and
    rtol = 1e-2 bound the method's own error. The fp64-reference comparison above is the tight check."""
    inputs, weights, _ = _problem(3, 5, 6, 2, seed=7)
    args = [t.clone().requires_grad_() for t in inputs + weights]
    assert torch.autograd.gradcheck(ops.denoiser_train, args, eps=1e-2, atol=2e-3, rtol=1e-2, nondet_tol=0.0)


def test_opcheck_custom_ops():
    inputs, weights, upstream = _problem(5, 20, 24, 2, seed=11)
    args = [t.clone().requires_grad_() for t in inputs + weights]
    torch.library.opcheck(ops.denoiser_fwd, tuple(args))
    _, a, z = ops.denoiser_fwd(*inputs, *weights)
    w_x, w_hidden, _, w_out, _ = weights
    torch.library.opcheck(ops.denoiser_bwd, (*upstream, inputs[0], a, z, w_x, w_hidden, w_out))


def test_torch_compile_traces_without_graph_break():
    inputs, weights, upstream = _problem(9, 20, 24, 2, seed=13)

    def step(*args):
        x0, a = ops.denoiser_train(*args)
        return (x0 * upstream[0]).sum() + torch.tanh(a).sum()

    assert_compiled_step_matches(step, inputs + weights)


def test_launch_counts_and_determinism():
    """Forward 1 launch, backward 4 (3 for L = 1); two runs bitwise identical, weight grads included."""
    for L, names in ((3, ["denoiser_fwd_kernel", "denoiser_bwd_act_kernel"] + ["denoiser_wgrad_kernel"] * 3),
                     (1, ["denoiser_fwd_kernel", "denoiser_bwd_act_kernel"] + ["denoiser_wgrad_kernel"] * 2)):
        inputs, weights, upstream = _problem(70, 38, 37, L, seed=17)  # 5 row blocks, 3 row steps per tile
        runs = []
        for _ in range(2):
            with K.count_launches() as c:
                runs.append(_run(ops.denoiser_train, inputs, weights, upstream))
            assert c.names == names
        for name, x, y in zip(NAMES, *runs):
            assert torch.equal(x, y), name


# --------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize("index,bad,name", [
    (0, lambda t: t[0], "x_t"),                               # 1-D
    (0, lambda t: t.double(), "x_t"),                         # unsupported dtype
    (0, lambda t: t.t(), "x_t"),                              # not contiguous (and wrong shape)
    (1, lambda t: t[:-1].contiguous(), "e_t"),                # wrong batch
    (1, lambda t: t.half(), "e_t"),                           # dtype != x_t's
    (2, lambda t: t[:, :-1].contiguous(), "cond"),            # width != H
    (3, lambda t: t[:, :-1].contiguous(), "w_x"),             # in-width != d
    (4, lambda t: t[:, :-1].contiguous(), "w_hidden"),
    (5, lambda t: t[:, :-1].contiguous(), "b_hidden"),
    (6, lambda t: t.t().contiguous(), "w_out"),
    (7, lambda t: t[:-1], "b_out"),
])
def test_forward_rejects_bad_input_before_launch(index, bad, name):
    inputs, weights, _ = _problem(4, 6, 7, 2, seed=29)
    args = inputs + weights
    args[index] = bad(args[index])
    with K.count_launches() as c, pytest.raises(ValueError, match=name):
        K.denoiser_forward(*args)
    assert c.count == 0


def test_backward_rejects_bad_input_before_launch():
    inputs, weights, upstream = _problem(4, 6, 7, 2, seed=31)
    _, a, z = K.denoiser_forward(*inputs, *weights)
    gx0, ga = upstream
    x, (w_x, w_h, _, w_o, _) = inputs[0], weights
    cases = [
        ("grad_x0", (gx0[:, 1:].contiguous(), ga, x, a, z, w_x, w_h, w_o)),
        ("grad_a", (gx0, ga.half(), x, a, z, w_x, w_h, w_o)),
        ("a", (gx0, ga, x, a[:-1].contiguous(), z, w_x, w_h, w_o)),
        ("z", (gx0, ga, x, a, z[:, :0].contiguous(), w_x, w_h, w_o)),
        ("z", (gx0, ga, x, a, z.half(), w_x, w_h, w_o)),
        ("w_hidden", (gx0, ga, x, a, z, w_x, w_h[:, 1:].contiguous(), w_o)),
        ("w_out", (gx0, ga, x, a, z, w_x, w_h, w_o.t())),
    ]
    for name, args in cases:
        with K.count_launches() as c, pytest.raises(ValueError, match=name):
            K.denoiser_backward(*args)
        assert c.count == 0, name


# --------------------------------------------------------------------------- sm_90a compile

COMPILE_CASES = [("bfloat16", 256), ("bfloat16", 4096), ("float32", 256), ("float32", 4096)]
DEFAULT = dict(d=512, H=1024, L=2)


def compile_rows() -> list[dict]:
    """Capture the forward and backward launches at the default size for :data:`COMPILE_CASES` and
    compile each distinct (kernel, dtype, meta) for sm_90a (run without the interpreter)."""
    from seda_fast import compile_report as cr
    d, H, L = DEFAULT["d"], DEFAULT["H"], DEFAULT["L"]
    rows, seen = [], set()
    for dtype, B in COMPILE_CASES:
        dt = getattr(torch, dtype)
        e = lambda *shape: torch.empty(*shape, dtype=dt)  # noqa: E731
        with K.capture_launches() as launches:
            K.denoiser_forward(e(B, d), e(B, H), e(B, H), e(H, d), e(L - 1, H, H), e(L - 1, H), e(d, H), e(d))
            K.denoiser_backward(e(B, d), e(B, H), e(B, d), e(B, H), e(B, L - 1, H), e(H, d), e(L - 1, H, H),
                                e(d, H))
        rows += cr.compile_unique(launches, dtype, seen, batch=B)
    return rows


def test_sm90_compile_zero_spills(tmp_path):
    rows = compile_rows_in_subprocess(__file__, tmp_path / "rows.json")
    assert_sm90_clean(rows, ["denoiser_fwd_kernel", "denoiser_bwd_act_kernel", "denoiser_wgrad_kernel"],
                      fields=("FROM_H", "BB"))
    for r in rows:
        if r["dtype"] == "bfloat16":
            assert r["wgmma"] if r.get("BM") in (64, None) else r["mma_sync"], r  # wgrad tiles: M = BN = 64


if __name__ == "__main__":  # the compile check's subprocess: python tests/test_denoiser_train.py OUT.json
    Path(sys.argv[1]).write_text(json.dumps(compile_rows(), indent=1))
