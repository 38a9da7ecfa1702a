"""Forward noising + denoiser + x0 loss: ``seda_fast.ops.denoiser_x0_loss.denoise_x0_loss`` / the
``seda_fast::denoiser_x0_loss_fwd`` and ``_bwd`` ops against the reference's noising
(``reference._noised``), ``reference.denoise`` and ``F.mse_loss``, forward and every gradient.

On CPU the kernels run in Triton's interpreter (tests/conftest.py) on 1-3 program grids; the
sm_90a compile check runs in a subprocess without the interpreter (it cannot compile).
"""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from seda_fast import model, reference, schedule
from seda_fast.ops import denoiser_x0_loss as ops
from seda_fast.ops.runtime import kernels
from helpers import (case_ids, assert_compiled_step_matches, assert_directional_derivatives, assert_flash_rule, assert_matches_reference, assert_sm90_clean,
                     compile_rows_in_subprocess)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
K = kernels()
T = 1000
NAMES = ["loss", "a", "grad e_t", "grad cond", "grad w_x", "grad w_hidden", "grad b_hidden", "grad w_out",
         "grad b_out"]


def _problem(B, d, H, L, seed=0, dtype=torch.float32):
    """``(targets, t, inputs, weights, grad_a)``: ``target, eps [B, d]``; steps ``t [B]``; ``e_t, cond
    [B, H]``; the 5 denoiser weights (nn.Linear's init, biases non-zero); an upstream gradient of ``a``."""
    torch.manual_seed(seed)
    den = model.Denoiser(d, H, L)
    with torch.no_grad():
        for layer in den.hidden:
            layer.bias.normal_(0.0, 0.5)
        den.out.bias.normal_(0.0, 0.5)
    g = torch.Generator().manual_seed(seed + 1)
    targets = [torch.randn(B, d, generator=g), torch.randn(B, d, generator=g)]
    t = torch.randint(1, T + 1, (B,), generator=g)
    inputs = [torch.randn(B, H, generator=g), torch.randn(B, H, generator=g)]
    w_hidden = torch.stack([l.weight.detach() for l in den.hidden]) if L > 1 else torch.empty(0, H, H)
    b_hidden = torch.stack([l.bias.detach() for l in den.hidden]) if L > 1 else torch.empty(0, H)
    weights = [den.in_x.weight.detach(), w_hidden, b_hidden, den.out.weight.detach(), den.out.bias.detach()]
    grad_a = 0.1 * torch.randn(B, H, generator=g)
    cast = lambda ts: [x.to(DEVICE, dtype).contiguous() for x in ts]  # noqa: E731
    return cast(targets), t.to(DEVICE), cast(inputs), cast(weights), grad_a.to(DEVICE, dtype)


def _eager(target, eps, t, e_t, cond, w_x, w_hidden, b_hidden, w_out, b_out):
    """The reference's diffusion term on a Denoiser-shaped namespace holding these tensors."""
    lin = lambda w, b=None: SimpleNamespace(weight=w, bias=b)  # noqa: E731
    den = SimpleNamespace(in_x=lin(w_x), out=lin(w_out, b_out),
                          hidden=[lin(w_hidden[i], b_hidden[i]) for i in range(w_hidden.shape[0])])
    x0_hat, a = reference.denoise(den, reference._noised(T, target, t, eps), e_t, cond)
    return F.mse_loss(x0_hat, target), a


def _fused(target, eps, t, e_t, cond, w_x, w_hidden, b_hidden, w_out, b_out):
    sa, sb = schedule.noising_coefficients(T, t, torch.float32)
    loss, a, _, _, _ = ops.denoiser_x0_loss_fwd(target, eps, torch.cat([sa, sb], 1), e_t, cond, w_x, w_hidden,
                                                b_hidden, w_out, b_out)
    return loss.sum() / target.numel(), a


def _run(fn, targets, t, inputs, weights, grad_a, dtype=None):
    """Loss, ``a`` and the gradients of ``e_t``, ``cond`` and the 5 weights for ``loss + <a, grad_a>``."""
    args = [x.detach().to(dtype or x.dtype).clone().requires_grad_() for x in inputs + weights]
    tg = [x.to(dtype or x.dtype) for x in targets]
    loss, a = fn(*tg, t, *args)
    (loss + (a * grad_a.to(a.dtype)).sum()).backward()
    return [loss.detach(), a.detach()] + [x.grad for x in args]


SHAPES = [(33, 48, 80, 3), (1, 38, 37, 1), (17, 70, 20, 2), (5, 20, 70, 1)]


@pytest.mark.parametrize("B,d,H,L", SHAPES, ids=case_ids("B,d,H,L", SHAPES))
def test_fp32_parity_with_reference_autograd(B, d, H, L):
    """Loss, ``a`` and all 7 gradients within 1e-5 of the fp32 reference's autograd and the fp64 one."""
    targets, t, inputs, weights, grad_a = _problem(B, d, H, L, seed=B + L)
    out = _run(_fused, targets, t, inputs, weights, grad_a)
    ref = _run(_eager, targets, t, inputs, weights, grad_a)
    ref64 = _run(_eager, targets, t, inputs, weights, grad_a, torch.float64)
    assert out[0].dtype == torch.float32
    assert_matches_reference(NAMES, out, ref, ref64, [None, None] + inputs + weights, L)


def test_module_entry_point_matches_the_reference_diffusion_term():
    """``denoise_x0_loss(den, ...)`` = noising + ``reference.denoise`` + MSE, module parameter grads
    included; a target or noise that requires grad is refused (its gradient would be dropped)."""
    torch.manual_seed(3)
    B, d, H = 17, 38, 37
    dens = [model.Denoiser(d, H, 2).to(DEVICE) for _ in range(2)]
    dens[1].load_state_dict(dens[0].state_dict())
    g = torch.Generator().manual_seed(4)
    x0, eps = (torch.randn(B, d, generator=g).to(DEVICE) for _ in range(2))
    t = torch.randint(1, T + 1, (B,), generator=g).to(DEVICE)
    e, c = (torch.randn(B, H, generator=g).to(DEVICE).requires_grad_() for _ in range(2))
    loss, a = ops.denoise_x0_loss(dens[0], x0, eps, t, e, c, T)
    (loss + a.sum()).backward()
    x0_hat, a_ref = reference.denoise(dens[1], reference._noised(T, x0, t, eps), e, c)
    ref = F.mse_loss(x0_hat, x0)
    grads = [p.grad.clone() for p in dens[0].parameters() if p.grad is not None] + [e.grad.clone(), c.grad.clone()]
    e.grad = c.grad = None
    (ref + a_ref.sum()).backward()
    ref_grads = [p.grad for p in dens[1].parameters() if p.grad is not None] + [e.grad, c.grad]
    assert len(grads) == len(ref_grads) == 5 + 2 and torch.allclose(loss, ref, rtol=1e-6)
    for i, (o, r) in enumerate(zip(grads, ref_grads)):
        assert torch.allclose(o, r, rtol=1e-5, atol=1e-6), i
    for bad in ("target", "eps"):
        args = [x0.clone().requires_grad_() if bad == "target" else x0, eps.clone().requires_grad_()
                if bad == "eps" else eps]
        with K.count_launches() as counter, pytest.raises(ValueError, match=bad):
            ops.denoise_x0_loss(dens[0], *args, t, e, c, T)
        assert counter.count == 0


def test_fp16_flash_attention_rule():
    """Kernel error <= 2 x (torch fp16 error) + atol vs the fp32 reference on the same rounded inputs;
    atol = 2^-10 max|ref| (one fp16 ulp at the tensor's scale: the final store's rounding)."""
    targets, t, inputs, weights, grad_a = _problem(33, 48, 80, 3, seed=5, dtype=torch.float16)
    out = _run(_fused, targets, t, inputs, weights, grad_a)
    ref16 = _run(_eager, targets, t, inputs, weights, grad_a)
    ref32 = _run(_eager, targets, t, inputs, weights, grad_a, torch.float32)
    for name, o, r16, r32 in zip(NAMES, out, ref16, ref32):
        assert_flash_rule(name, o, r16, r32, 2.0 ** -10 * r32.abs().max().item())


def test_finite_difference_directional_derivatives_fp32():
    """The fused backward against central differences of the fused forward itself (the kernels take
    fp32/fp16/bf16, not fp64), per argument, for ``loss + <a, grad_a>`` on a tiny L = 2 problem."""
    targets, t, inputs, weights, grad_a = _problem(3, 5, 6, 2, seed=7)
    grads = _run(_fused, targets, t, inputs, weights, grad_a)[2:]

    def loss(args):
        value, a = _fused(*targets, t, *args)
        return (value.double() + (a.double() * grad_a.double()).sum()).item()
    assert_directional_derivatives(loss, inputs + weights, grads, NAMES[2:], torch.Generator().manual_seed(8))


def test_opcheck_and_torch_compile():
    targets, t, inputs, weights, grad_a = _problem(5, 20, 24, 2, seed=11)
    sa, sb = schedule.noising_coefficients(T, t, torch.float32)
    coef = torch.cat([sa, sb], 1)
    torch.library.opcheck(ops.denoiser_x0_loss_fwd,
                          (*targets, coef, *[x.clone().requires_grad_() for x in inputs + weights]))
    loss, a, x_t, x0_hat, z = ops.denoiser_x0_loss_fwd(*targets, coef, *inputs, *weights)
    w_x, w_hidden, _, w_out, _ = weights
    torch.library.opcheck(ops.denoiser_x0_loss_bwd, (torch.ones_like(loss), grad_a, targets[0], x_t, x0_hat, a, z,
                                                     w_x, w_hidden, w_out))

    def step(*args):
        loss, a = _fused(*targets, t, *args)
        return loss + torch.tanh(a).sum()
    assert_compiled_step_matches(step, inputs + weights)


def test_launch_counts_and_determinism():
    """Forward 1 launch, backward 4 (3 for L = 1); two runs bitwise identical, weight grads included."""
    for L, wgrads in ((3, 3), (1, 2)):
        targets, t, inputs, weights, grad_a = _problem(40, 38, 37, L, seed=17)  # 3 row blocks
        runs = []
        for _ in range(2):
            with K.count_launches() as c:
                runs.append(_run(_fused, targets, t, inputs, weights, grad_a))
            assert c.names == ["denoiser_x0_loss_fwd_kernel", "denoiser_x0_loss_bwd_kernel"] + \
                ["denoiser_wgrad_kernel"] * wgrads
        for name, x, y in zip(NAMES, *runs):
            assert torch.equal(x, y), name


def test_launchers_reject_bad_input_before_launch():
    targets, t, inputs, weights, grad_a = _problem(4, 6, 7, 2, seed=29)
    sa, sb = schedule.noising_coefficients(T, t, torch.float32)
    coef = torch.cat([sa, sb], 1)
    fwd_cases = [("target", (targets[0][0], targets[1], coef)),                      # 1-D
                 ("eps", (targets[0], targets[1][:-1].contiguous(), coef)),
                 ("coef", (targets[0], targets[1], coef.double())),
                 ("coef", (targets[0], targets[1], coef[:, :1].contiguous()))]
    for name, head in fwd_cases:
        with K.count_launches() as c, pytest.raises(ValueError, match=name):
            K.denoiser_x0_loss_forward(*head, *inputs, *weights)
        assert c.count == 0, name
    loss, a, x_t, x0_hat, z = K.denoiser_x0_loss_forward(*targets, coef, *inputs, *weights)
    w_x, w_hidden, _, w_out, _ = weights
    g = torch.ones_like(loss)
    bwd_cases = [("grad_loss", (g.double(), grad_a, targets[0], x_t, x0_hat, a, z)),
                 ("grad_a", (g, grad_a[:, 1:].contiguous(), targets[0], x_t, x0_hat, a, z)),
                 ("x0_hat", (g, grad_a, targets[0], x_t, x0_hat.half(), a, z)),
                 ("z", (g, grad_a, targets[0], x_t, x0_hat, a, z[:, :0].contiguous()))]
    for name, args in bwd_cases:
        with K.count_launches() as c, pytest.raises(ValueError, match=name):
            K.denoiser_x0_loss_backward(*args, w_x, w_hidden, w_out)
        assert c.count == 0, name


# --------------------------------------------------------------------------- sm_90a compile

COMPILE_CASES = [("bfloat16", 256), ("bfloat16", 4096), ("float32", 256)]


def compile_rows() -> list[dict]:
    """The forward and backward launches at the default size (d = 512, H = 1024, L = 2), each distinct
    (kernel, dtype, meta) compiled for sm_90a (run without the interpreter)."""
    from seda_fast.tools import compile_report as cr
    d, H, L = 512, 1024, 2
    rows, seen = [], set()
    for dtype, B in COMPILE_CASES:
        dt = getattr(torch, dtype)
        e = lambda *shape: torch.empty(*shape, dtype=dt)  # noqa: E731
        f32 = lambda *shape: torch.empty(*shape, dtype=torch.float32)  # noqa: E731
        w = [e(H, d), e(L - 1, H, H), e(L - 1, H), e(d, H), e(d)]
        with K.capture_launches() as launches:
            K.denoiser_x0_loss_forward(f32(B, d), f32(B, d), f32(B, 2), e(B, H), e(B, H), *w)
            K.denoiser_x0_loss_backward(f32(B), e(B, H), f32(B, d), e(B, d), e(B, d), e(B, H), e(B, L - 1, H),
                                        w[0], w[1], w[3])
        rows += cr.compile_unique(launches, dtype, seen, batch=B)
    return rows


def test_sm90_compile_zero_spills(tmp_path):
    rows = compile_rows_in_subprocess(__file__, tmp_path / "rows.json")
    assert_sm90_clean(rows, ["denoiser_x0_loss_fwd_kernel", "denoiser_x0_loss_bwd_kernel", "denoiser_wgrad_kernel"],
                      fields=("FROM_H",))
    for r in rows:
        if r["dtype"] == "bfloat16":
            assert r["wgmma"] if r.get("BM") in (64, None) else r["mma_sync"], r  # wgrad tiles: M = BN = 64


if __name__ == "__main__":  # the compile check's subprocess: python tests/ops/test_denoiser_x0_loss.py OUT.json
    Path(sys.argv[1]).write_text(json.dumps(compile_rows(), indent=1))
