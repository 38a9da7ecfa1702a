"""The random-t diffusion term as phases: ``seda_fast.ops.denoise_phases.denoise_x0_loss`` /
``denoise_x0_term`` and the ``seda_fast::denoise_phases_fwd`` and ``_bwd`` ops against the reference's
noising, ``reference.denoise`` and ``F.mse_loss``: the loss and the gradients of ``e_t``, ``cond`` and
the five denoiser weights, from the loss alone (stage 2's term) and from the loss plus a consumer
of the denoiser's ``a`` (stage 1's, whose center constraint reads it).

On CPU the kernels run in Triton's interpreter (tests/conftest.py); the sm_90a compile check runs in
a subprocess without the interpreter (it cannot compile).
"""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from seda_fast import model, reference
from seda_fast.ops import denoise_phases as ops
from seda_fast.ops.runtime import kernels, launch_options
from helpers import (assert_compiled_step_matches, assert_directional_derivatives, assert_flash_rule,
                     assert_matches_reference, assert_sm90_clean, case_ids, compile_rows_in_subprocess, rel)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
K = kernels()
DP = K.denoise_phases_module
T = 1000
NAMES = ["loss", "grad e_t", "grad cond", "grad w_x", "grad w_hidden", "grad b_hidden", "grad w_out", "grad b_out"]


def _problem(B, d, H, L, seed=0, dtype=torch.float32):
    """``(targets, t, inputs, dens)``: ``target, eps [B, d]``; steps ``t [B]``; ``e_t, cond [B, H]``;
    two identical Denoisers (biases non-zero) in ``dtype``."""
    torch.manual_seed(seed)
    den = model.Denoiser(d, H, L)
    with torch.no_grad():
        for layer in den.hidden:
            layer.bias.normal_(0.0, 0.5)
        den.out.bias.normal_(0.0, 0.5)
    g = torch.Generator().manual_seed(seed + 1)
    targets = [torch.randn(B, d, generator=g).to(DEVICE, dtype) for _ in range(2)]
    t = torch.randint(1, T + 1, (B,), generator=g).to(DEVICE)
    inputs = [torch.randn(B, H, generator=g).to(DEVICE, dtype) for _ in range(2)]
    return targets, t, inputs, den.to(DEVICE, dtype)


def _eager(den, target, eps, t, e_t, cond):
    x0_hat, _ = reference.denoise(den, reference._noised(T, target, t, eps), e_t, cond)
    return F.mse_loss(x0_hat, target)


def _fused(den, target, eps, t, e_t, cond):
    return ops.denoise_x0_loss(den, target, eps, t, e_t, cond, T)


def _with_a(term):
    """Stage 1's use: the loss plus a function of ``a`` (``mean(a^2) / 2``, whose gradient ``a / n``
    reaches ``a`` as the center constraint's does; a square, so the sum does not cancel)."""
    def fn(den, target, eps, t, e_t, cond):
        loss, a = term(den, target, eps, t, e_t, cond)
        return loss + 0.5 * (a * a).mean().to(loss.dtype)
    return fn


def _eager_term(den, target, eps, t, e_t, cond):
    x0_hat, a = reference.denoise(den, reference._noised(T, target, t, eps), e_t, cond)
    return F.mse_loss(x0_hat, target), a


def _fused_term(den, target, eps, t, e_t, cond):
    return ops.denoise_x0_term(den, target, eps, t, e_t, cond, T)


def _run(fn, targets, t, inputs, den, dtype=None):
    """The loss and the gradients of ``e_t``, ``cond`` and the denoiser's weights (``w_hidden``/``b_hidden``
    stacked over the residual layers, ``None`` without any)."""
    import copy
    den = copy.deepcopy(den).to(dtype or den.in_x.weight.dtype)
    args = [x.detach().to(dtype or x.dtype).clone().requires_grad_() for x in inputs]
    loss = fn(den, *[x.to(dtype or x.dtype) for x in targets], t, *args)
    loss.backward()
    hid = [layer.weight.grad for layer in den.hidden], [layer.bias.grad for layer in den.hidden]
    stack = lambda ts: torch.stack(ts) if ts else None  # noqa: E731
    return [loss.detach(), *(x.grad for x in args), den.in_x.weight.grad, stack(hid[0]), stack(hid[1]),
            den.out.weight.grad, den.out.bias.grad]


SHAPES = [(33, 48, 80, 3), (1, 38, 37, 1), (17, 70, 20, 2), (130, 20, 19, 2)]


@pytest.mark.parametrize("B,d,H,L", SHAPES, ids=case_ids("B,d,H,L", SHAPES))
def test_fp32_parity_with_reference_autograd(B, d, H, L):
    """The loss and all 7 gradients within 1e-5 of the fp32 reference's autograd and the fp64 one
    (B = 130: three row splits of the weight gradients)."""
    targets, t, inputs, den = _problem(B, d, H, L, seed=B + L)
    out = _run(_fused, targets, t, inputs, den)
    ref = _run(_eager, targets, t, inputs, den)
    ref64 = _run(_eager, targets, t, inputs, den, torch.float64)
    assert out[0].dtype == torch.float32
    keep = [i for i, o in enumerate(out) if o is not None]  # L = 1: no residual layers, no their gradients
    assert [i for i, r in enumerate(ref) if r is not None] == keep and len(keep) == len(NAMES) - 2 * (L == 1)
    pick = lambda xs: [xs[i] for i in keep]  # noqa: E731
    assert_matches_reference(pick(NAMES), pick(out), pick(ref), pick(ref64), pick([None] + inputs + [None] * 5), L)


@pytest.mark.parametrize("B,d,H,L", SHAPES[:2] + SHAPES[3:], ids=case_ids("B,d,H,L", SHAPES[:2] + SHAPES[3:]))
def test_fp32_parity_with_a_consumer(B, d, H, L):
    """Stage 1's term: the loss plus a function of ``a``; the value and all 7 gradients within 1e-5
    of the fp32 and fp64 reference autograd (``dL/da`` reaches ``cond``, ``e_t`` and ``W_x``)."""
    targets, t, inputs, den = _problem(B, d, H, L, seed=B + L + 1)
    out = _run(_with_a(_fused_term), targets, t, inputs, den)
    ref = _run(_with_a(_eager_term), targets, t, inputs, den)
    ref64 = _run(_with_a(_eager_term), targets, t, inputs, den, torch.float64)
    keep = [i for i, o in enumerate(out) if o is not None]
    pick = lambda xs: [xs[i] for i in keep]  # noqa: E731
    assert_matches_reference(pick(NAMES), pick(out), pick(ref), pick(ref64), pick([None] + inputs + [None] * 5), L)
    a = ops.denoise_x0_term(den, *targets, t, *inputs, T)[1]
    assert rel(a, _eager_term(den, *targets, t, *inputs)[1]) < 1e-5


@pytest.mark.parametrize("B,d,H,L,tiles", [(1, 20, 37, 2, None), (33, 19, 24, 1, None),
                                           (70, 40, 37, 3, DP.PhaseTiles(16, 32, 16, 4, 2, epi_parts=2))],
                         ids=["B1", "B33-L1", "B70-16x32-epi2"])
def test_output_phase_forms_the_loss_and_its_gradient(B, d, H, L, tiles):
    """With ``target``, the output phase's epilogue gives ``mean (x0_hat - target)^2`` and its
    gradient ``2 (x0_hat - target) / (B d)`` (fp32, before x0_hat's rounding; ragged tiles and a
    split epilogue masked), and x0_hat is the same as without."""
    gen = torch.Generator().manual_seed(B + d)
    r = lambda *shape: torch.randn(*shape, generator=gen).to(DEVICE)  # noqa: E731
    w = [r(H, d) * 0.2, r(L - 1, H, H) * 0.1, r(L - 1, H) * 0.1, r(d, H) * 0.1, r(d) * 0.1]
    x_t, cond, target = r(B, d), r(B, H), r(B, d)
    x0_hat, a, _, loss, grad_x0 = DP.denoise_phases_forward(x_t, cond, *w, target=target, tiles=tiles)
    plain = DP.denoise_phases_forward(x_t, cond, *w, tiles=tiles)
    assert torch.equal(x0_hat, plain[0]) and torch.equal(a, plain[1])
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert rel(loss, F.mse_loss(x0_hat, target)) < 1e-6
    assert rel(grad_x0, 2 * (x0_hat - target) / (B * d)) < 1e-6


@pytest.mark.parametrize("tiles", [pytest.param(None, id="picked"),
                                   pytest.param(DP.PhaseTiles(16, 32, 16, 4, 2, epi_parts=2), id="16x32-epi2")])
def test_tiles_and_row_splits(tiles):
    """A split epilogue over several column tiles, and the weight gradients split over rows, give
    the reference's gradients through the launchers directly, with gradients arriving at both
    ``x0_hat`` and ``a``."""
    B, d, H, L = 130, 20, 37, 2
    targets, t, inputs, den = _problem(B, d, H, L, seed=3)
    assert DP.wgrad_plan(torch.float32, B, d, H, L - 1, tiles, DP.WGRAD_JOBS)[1] == 3  # the launcher's row splits
    x_t = reference._noised(T, targets[0], t, targets[1])
    cond = inputs[0] + inputs[1]
    w = [den.in_x.weight, den.hidden[0].weight.unsqueeze(0), den.hidden[0].bias.unsqueeze(0), den.out.weight,
         den.out.bias]
    w = [x.detach().contiguous() for x in w]
    x0_hat, a, acts = DP.denoise_phases_forward(x_t, cond, *w, tiles=tiles)
    gen = torch.Generator().manual_seed(4)
    g, ga = torch.randn(B, d, generator=gen).to(DEVICE), torch.randn(B, H, generator=gen).to(DEVICE)
    grads = DP.denoise_phases_backward(g, x_t, acts, a, cond, *w, grad_a=ga, tiles=tiles)
    args = [cond.clone().requires_grad_()] + [x.clone().requires_grad_() for x in w]
    lin = lambda wt, b=None: SimpleNamespace(weight=wt, bias=b)  # noqa: E731
    ns = SimpleNamespace(in_x=lin(args[1]), out=lin(args[4], args[5]), hidden=[lin(args[2][0], args[3][0])])
    ref, ref_a = reference.denoise(ns, x_t, torch.zeros_like(cond), args[0])
    ((ref * g).sum() + (ref_a * ga).sum()).backward()
    assert rel(x0_hat, ref.detach()) < 1e-5 and rel(a, ref_a.detach()) < 1e-5
    for name, o, a in zip(("cond", "w_x", "w_hidden", "b_hidden", "w_out", "b_out"), grads, args):
        assert o.shape == a.shape and rel(o, a.grad) < 1e-5, name


def test_fp16_flash_attention_rule():
    """Kernel error <= 2 x (torch fp16 error) + atol vs the fp32 reference on the same rounded inputs;
    atol = 2^-10 max|ref| (one fp16 ulp at the tensor's scale)."""
    targets, t, inputs, den = _problem(33, 48, 80, 3, seed=5, dtype=torch.float16)
    out = _run(_fused, targets, t, inputs, den)
    ref16 = _run(_eager, targets, t, inputs, den)
    ref32 = _run(_eager, targets, t, inputs, den, torch.float32)
    for name, o, r16, r32 in zip(NAMES, out, ref16, ref32):
        assert_flash_rule(name, o, r16, r32, 2.0 ** -10 * r32.abs().max().item())


def test_finite_difference_directional_derivatives_fp32():
    """The fused backward against central differences of the fused forward itself, per argument
    (``e_t``, ``cond`` and the denoiser's weights) on a tiny L = 2 problem."""
    targets, t, inputs, den = _problem(3, 5, 6, 2, seed=7)
    grads = _run(_fused, targets, t, inputs, den)[1:]
    params = [den.in_x.weight, den.hidden[0].weight, den.hidden[0].bias, den.out.weight, den.out.bias]
    args = inputs + [p.detach().clone() for p in params]

    def loss(values):
        with torch.no_grad():
            for p, v in zip(params, values[2:]):
                p.copy_(v)
            return _fused(den, *targets, t, *values[:2]).double().item()
    flat = grads[:2] + [grads[2], grads[3][0], grads[4][0], grads[5], grads[6]]
    assert_directional_derivatives(loss, args, flat, NAMES[1:], torch.Generator().manual_seed(8))


def test_opcheck_and_torch_compile():
    targets, t, inputs, den = _problem(5, 20, 24, 2, seed=11)
    x_t = reference._noised(T, targets[0], t, targets[1])
    w = [den.in_x.weight, den.hidden[0].weight.unsqueeze(0), den.hidden[0].bias.unsqueeze(0), den.out.weight,
         den.out.bias]
    w = [x.detach().contiguous() for x in w]
    cond = inputs[0] + inputs[1]
    torch.library.opcheck(ops.denoise_phases_fwd, (x_t, targets[0], cond.clone().requires_grad_(),
                                                   *[x.clone().requires_grad_() for x in w]))
    _, a, acts, grad_x0 = ops.denoise_phases_fwd(x_t, targets[0], cond, *w)
    for grad_a in (None, torch.ones_like(a)):
        torch.library.opcheck(ops.denoise_phases_bwd, (grad_x0, grad_a, x_t, acts, a, cond, *w))

    for term in (_fused, _with_a(_fused_term)):
        def step(e_t, c, term=term):
            return term(den, *targets, t, e_t, c)
        assert_compiled_step_matches(step, inputs)


def test_launch_counts_and_determinism():
    """Forward L + 1 launches, backward L + 1; two runs bitwise identical, weight grads included."""
    for L in (3, 1):
        targets, t, inputs, den = _problem(40, 38, 37, L, seed=17)
        runs = []
        for _ in range(2):
            with K.count_launches() as c, launch_options(graph=False):  # on CUDA: no replay of a recurring call
                runs.append(_run(_fused, targets, t, inputs, den))
            assert c.names == ["unroll_phase_kernel"] * sum(DP.phase_counts(L)) and sum(DP.phase_counts(L)) == 2 * L + 2
        for name, x, y in zip(NAMES, *runs):
            assert (x is None and y is None) or torch.equal(x, y), name


def test_launchers_reject_bad_input_before_launch():
    targets, t, inputs, den = _problem(4, 6, 7, 2, seed=29)
    x_t = reference._noised(T, targets[0], t, targets[1])
    cond = inputs[0]
    w = [den.in_x.weight, den.hidden[0].weight.unsqueeze(0), den.hidden[0].bias.unsqueeze(0), den.out.weight,
         den.out.bias]
    w = [x.detach().contiguous() for x in w]
    for name, head in (("x_t", (x_t[0], cond)), ("cond", (x_t, cond[:, 1:].contiguous())),
                       ("x_t", (x_t.double(), cond))):
        with K.count_launches() as c, pytest.raises(ValueError, match=name):
            DP.denoise_phases_forward(*head, *w)
        assert c.count == 0, name
    x0_hat, a, acts = DP.denoise_phases_forward(x_t, cond, *w)
    for name, args, grad_a in (("grad_x0", (x0_hat[:, 1:].contiguous(), x_t, acts, a), None),
                               ("acts", (x0_hat, x_t, acts[1:], a), None),
                               ("a", (x0_hat, x_t, acts, a[1:]), None),
                               ("grad_a", (x0_hat, x_t, acts, a), a[:, 1:])):
        with K.count_launches() as c, pytest.raises(ValueError, match=name):
            DP.denoise_phases_backward(*args, cond, *w, grad_a=grad_a)
        assert c.count == 0, name
    for bad in ("target", "eps"):
        tg = [x.clone().requires_grad_() if n == bad else x for n, x in zip(("target", "eps"), targets)]
        with K.count_launches() as c, pytest.raises(ValueError, match=bad):
            ops.denoise_x0_loss(den, *tg, t, *inputs, T)
        assert c.count == 0


def test_flat_gradient_split_is_one_split_and_a_view_per_multi_dim_part():
    """The backward's flat gradient reaches autograd as views of one buffer, in the op's order: one
    ``split`` and a reshaping view only for the parts that are not 1-D (each op is a host dispatch)."""
    from seda_fast.ops.runtime import split_flat
    from seda_fast.tools.cost_baselines import record_aten_ops
    B, d, H, nh = 3, 5, 7, 1
    plan = ops._plan(B, d, H, nh)
    flat = torch.arange(sum(plan[0]), dtype=torch.float32)
    parts = split_flat(flat, plan)
    layout = dict(K.denoise_phases_module.grad_layout(B, d, H, nh))
    order = K.denoise_phases_module.GRAD_ORDER
    assert [tuple(p.shape) for p in parts] == [tuple(layout[n]) for n in order]
    assert all(p.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr() for p in parts)
    names = [o.name for o in record_aten_ops(lambda: split_flat(flat, plan))]
    assert names.count("split_with_sizes") + names.count("split") == 1
    assert names.count("view") == sum(len(layout[n]) > 1 for n in order) == len(names) - 1


# --------------------------------------------------------------------------- sm_90a compile

COMPILE_CASES = [("bfloat16", 128), ("bfloat16", 256), ("bfloat16", 640), ("bfloat16", 4096), ("float32", 256)]


def compile_rows() -> list[dict]:
    """The forward and backward (with and without a ``dL/da``) launches at the default size (d = 512,
    H = 1024, L = 2), each distinct (kernel, dtype, meta) compiled for sm_90a (run without the
    interpreter)."""
    from seda_fast.tools import compile_report as cr
    d, H, L = 512, 1024, 2
    rows, seen = [], set()
    for dtype, B in COMPILE_CASES:
        dt = getattr(torch, dtype)
        e = lambda *shape: torch.empty(*shape, dtype=dt)  # noqa: E731
        w = [e(H, d), e(L - 1, H, H), e(L - 1, H), e(d, H), e(d)]
        with K.capture_launches() as launches:
            DP.denoise_phases_forward(e(B, d), e(B, H), *w, target=e(B, d))  # as the op runs it (X0_LOSS)
            for grad_a in (e(B, H), None):  # stage 1's (GA_SEED) and stage 2's
                DP.denoise_phases_backward(e(B, d), e(B, d), e(DP.saved_numel(B, d, H, L)), e(B, H), e(B, H), *w,
                                           grad_a=grad_a)
        rows += cr.compile_unique(launches, dtype, seen, batch=B)
    return rows


def test_sm90_compile_zero_spills(tmp_path):
    rows = compile_rows_in_subprocess(__file__, tmp_path / "rows.json")
    assert_sm90_clean(rows, ["unroll_phase_kernel"], fields=("KIND",))


if __name__ == "__main__":  # the compile check's subprocess: python tests/ops/test_denoise_phases.py OUT.json
    Path(sys.argv[1]).write_text(json.dumps(compile_rows(), indent=1))
