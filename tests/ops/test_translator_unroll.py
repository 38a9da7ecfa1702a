"""Stage-2 training unroll: ``seda_fast.ops.translator_unroll.translator_unroll`` / the
``seda_fast::translator_unroll_fwd`` and ``_bwd`` ops, forward and every gradient against the eager loop of
``reference.translator_pfin_sample`` (``denoise`` + ``pfin_step`` + DDIM update) and its autograd.

On CPU the kernels run in Triton's interpreter (tests/conftest.py) on 1-3 program grids; the
sm_90a compile check runs in a subprocess without the interpreter (it cannot compile).
"""
import json
import sys
from pathlib import Path

import pytest
import torch

from seda_fast.ops import translator_unroll as ops
from seda_fast.ops.runtime import kernels
from helpers import (UNROLL_NAMES as NAMES, eager_unroll as _eager_unroll, run_unroll as _run,
                     unroll_problem as _problem, assert_unroll_entry_matches_sampler, case_ids,
                     assert_compiled_step_matches, assert_directional_derivatives, assert_flash_rule,
                     assert_matches_reference, assert_sm90_clean, compile_rows_in_subprocess)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
K = kernels()


def _fused_unroll(x, m, cond, e_table, ddim, *weights):
    return ops.translator_unroll_fwd(x, m, cond, e_table, ddim, *weights)[0]


SHAPES = [(33, 48, 80, 3, 4), (1, 38, 37, 1, 1), (17, 70, 20, 1, 2),
          (5, 20, 70, 3, 1)]


@pytest.mark.parametrize("B,d,H,L,steps", SHAPES, ids=case_ids("B,d,H,L,steps", SHAPES))
def test_fp32_parity_with_reference_autograd(B, d, H, L, steps):
    """``m`` and all 17 gradients within 1e-5 of the fp32 reference's autograd and of the fp64 one
    (odd widths, d > H and d < H, batch 1, L = 1 and 3, K = 1 to 4, 1-3 row blocks)."""
    inputs, ddim, weights, upstream = _problem(B, d, H, L, steps, seed=B + L + steps)
    out = _run(_fused_unroll, inputs, ddim, weights, upstream)
    ref = _run(_eager_unroll, inputs, ddim, weights, upstream)
    ref64 = _run(_eager_unroll, inputs, ddim.double(), weights, upstream, torch.float64)
    assert_matches_reference(NAMES, out, ref, ref64, [None] + inputs + weights, L)


def test_module_entry_point_matches_translator_pfin_sample():
    """``translator_unroll(den, pfin, ...)`` from the model's own start state = the reference sampler
    (``reference.translator_pfin_sample`` with explicit noise), module parameter gradients included."""
    assert_unroll_entry_matches_sampler(ops.translator_unroll)


def test_fp16_flash_attention_rule():
    """Kernel error <= 2 x (torch fp16 error) + atol, both vs the fp32 reference on the same rounded
    inputs; atol = 2^-10 max|ref| (one fp16 ulp at the tensor's scale: the final store's rounding)."""
    inputs, ddim, weights, upstream = _problem(17, 48, 80, 2, 3, seed=5, dtype=torch.float16)
    out = _run(_fused_unroll, inputs, ddim, weights, upstream)
    ref16 = _run(_eager_unroll, inputs, ddim, weights, upstream)
    ref32 = _run(_eager_unroll, inputs, ddim, weights, upstream, torch.float32)
    for name, o, r16, r32 in zip(NAMES, out, ref16, ref32):
        assert o.dtype == torch.float16, name
        assert_flash_rule(name, o, r16, r32, 2.0 ** -10 * r32.abs().max().item())


def test_finite_difference_directional_derivatives_fp32():
    """The fused backward against central differences of the fused forward itself, per argument:
    ``<dL/darg, u> ~= (L(arg + eps u) - L(arg - eps u)) / (2 eps)`` with ``L = <m, v>`` and random
    ``u``, ``v`` of unit entries (the kernels take fp32/fp16/bf16, not fp64). Tiny L = 2, K = 2
    problem, eps = 1e-2: truncation ~ eps^2 |L^(3)| and rounding ~ ulp(L) / eps ~ 5e-5 absolute
    (worst seen: 2.5e-3 relative, w_gm; 5e-5 absolute on x_start's 0.025), so the bound
    1e-2 |numerical| + 1e-4 is the method's own error with a 4x margin, and a 5% error in any one
    gradient fails (checked by scaling each returned gradient by 1.05 in turn). (torch's gradcheck in fp32 needed ~110 s for the full
    Jacobian; its fast mode normalises ``u`` over all 17 arguments, which hides a 5% error under
    its atol.) The fp64-reference comparison above is the tight check."""
    inputs, ddim, weights, _ = _problem(3, 5, 6, 2, 2, seed=7)
    g = torch.Generator().manual_seed(8)
    v = torch.randn(3, 5, generator=g).to(DEVICE)
    grads = _run(_fused_unroll, inputs, ddim, weights, v)[1:]
    args = inputs + weights

    def loss(a):
        return (_fused_unroll(*a[:4], ddim, *a[4:]).double() * v.double()).sum().item()
    assert_directional_derivatives(loss, args, grads, NAMES[1:], g)


def test_opcheck_custom_ops():
    inputs, ddim, weights, upstream = _problem(5, 20, 24, 2, 2, seed=11)
    args = [t.clone().requires_grad_() for t in inputs]
    torch.library.opcheck(ops.translator_unroll_fwd, (*args, ddim, *[w.clone().requires_grad_() for w in weights]))
    _, xs, ms = ops.translator_unroll_fwd(*inputs, ddim, *weights)
    torch.library.opcheck(ops.translator_unroll_bwd, (upstream, xs, ms, inputs[2], inputs[3], ddim, *weights))


def test_torch_compile_traces_without_graph_break():
    inputs, ddim, weights, upstream = _problem(9, 20, 24, 2, 2, seed=13)

    def step(*args):
        m = _fused_unroll(*args[:4], ddim, *args[4:])
        return (m * upstream).sum() + torch.tanh(m).sum()

    assert_compiled_step_matches(step, inputs + weights)


def test_launch_counts_and_determinism():
    """Forward 1 launch; backward K x (1 step kernel + 5 weight-gradient launches), K x (1 + 4) for
    L = 1; two runs bitwise identical, every gradient included."""
    for L, per_step in ((3, 5), (1, 4)):
        steps = 2
        inputs, ddim, weights, upstream = _problem(40, 38, 37, L, steps, seed=17)  # 3 row blocks, 2 row steps
        runs = []
        for _ in range(2):
            with K.count_launches() as c:
                runs.append(_run(_fused_unroll, inputs, ddim, weights, upstream))
            expected = ["translator_unroll_fwd_kernel"] + (
                ["translator_unroll_bwd_step_kernel"] + ["denoiser_wgrad_kernel"] * per_step) * steps
            assert c.names == expected
        for name, x, y in zip(NAMES, *runs):
            assert torch.equal(x, y), name


# --------------------------------------------------------------------------- argument checks

def _args(**bad):
    inputs, ddim, weights, _ = _problem(4, 6, 7, 2, 2, seed=29)
    names = ["x_start", "m_start", "cond", "e_table", "ddim", "w_x", "w_hidden", "b_hidden", "w_out", "b_out",
             "w_pm", "w_pu", "b_p", "w_pd", "b_pd", "w_gm", "w_gu", "b_g"]
    args = dict(zip(names, inputs + [ddim] + weights))
    for name, fn in bad.items():
        args[name] = fn(args[name])
    return list(args.values())


@pytest.mark.parametrize("name,bad", [
    ("x_start", lambda t: t[0]),                      # 1-D
    ("x_start", lambda t: t.double()),                # unsupported dtype
    ("m_start", lambda t: t[:-1].contiguous()),       # wrong batch
    ("cond", lambda t: t[:, :-1].contiguous()),       # width != H
    ("cond", lambda t: t.half()),                     # dtype != the weights'
    ("e_table", lambda t: t[:, 1:].contiguous()),
    ("ddim", lambda t: t[:1].contiguous()),           # K rows != e_table's
    ("ddim", lambda t: t.half()),
    ("w_x", lambda t: t[:, :-1].contiguous()),
    ("w_hidden", lambda t: t[:, 1:].contiguous()),
    ("b_out", lambda t: t[:-1]),
    ("w_pd", lambda t: t.t().contiguous()),
    ("w_gu", lambda t: t[:-1].contiguous()),
    ("b_g", lambda t: t.half()),
])
def test_forward_rejects_bad_input_before_launch(name, bad):
    with K.count_launches() as c, pytest.raises(ValueError, match=name):
        K.translator_unroll_forward(*_args(**{name: bad}))
    assert c.count == 0


def test_backward_rejects_bad_input_before_launch():
    x, m, cond, e, ddim, *w = _args()
    _, xs, ms = K.translator_unroll_forward(x, m, cond, e, ddim, *w)
    cases = [("xs", (m, xs[:1].contiguous(), ms)), ("ms", (m, xs, ms[:-1].contiguous())),
             ("ms", (m, xs, ms.half())), ("grad_m", (m[:, 1:].contiguous(), xs, ms))]
    for name, (gm, xs_, ms_) in cases:
        with K.count_launches() as c, pytest.raises(ValueError, match=name):
            K.translator_unroll_backward(gm, xs_, ms_, cond, e, ddim, *w)
        assert c.count == 0, name


# --------------------------------------------------------------------------- sm_90a compile

COMPILE_CASES = [("bfloat16", 256), ("bfloat16", 4096), ("float32", 256)]
DEFAULT = dict(d=512, H=1024, L=2, K=10)


def compile_rows() -> list[dict]:
    """Capture the forward and backward launches at the default size for :data:`COMPILE_CASES` and
    compile each distinct (kernel, dtype, meta) for sm_90a (run without the interpreter)."""
    from seda_fast.tools import compile_report as cr
    d, H, L, steps = DEFAULT["d"], DEFAULT["H"], DEFAULT["L"], DEFAULT["K"]
    rows, seen = [], set()
    for dtype, B in COMPILE_CASES:
        dt = getattr(torch, dtype)
        e = lambda *shape: torch.empty(*shape, dtype=dt)  # noqa: E731
        f32 = lambda *shape: torch.empty(*shape, dtype=torch.float32)  # noqa: E731
        w = [e(H, d), e(L - 1, H, H), e(L - 1, H), e(d, H), e(d), e(H, d), e(H, d), e(H), e(d, H), e(d), e(d, d),
             e(d, d), e(d)]
        with K.capture_launches() as launches:
            K.translator_unroll_forward(e(B, d), e(B, d), e(B, H), e(steps, H), f32(steps, 2), *w)
            K.translator_unroll_backward(e(B, d), f32(steps, B, d), f32(steps + 1, B, d), e(B, H), e(steps, H),
                                         f32(steps, 2), *w)
        rows += cr.compile_unique(launches, dtype, seen, batch=B)
    return rows


def test_sm90_compile_zero_spills(tmp_path):
    rows = compile_rows_in_subprocess(__file__, tmp_path / "rows.json")
    assert_sm90_clean(rows, ["translator_unroll_fwd_kernel", "translator_unroll_bwd_step_kernel",
                             "denoiser_wgrad_kernel"], fields=("FROM_H", "ACC"))
    for r in rows:
        if r["dtype"] == "bfloat16":
            assert r["wgmma"] if r.get("BM") in (64, None) else r["mma_sync"], r  # wgrad tiles: M = BN = 64


if __name__ == "__main__":  # the compile check's subprocess: python tests/ops/test_translator_unroll.py OUT.json
    Path(sys.argv[1]).write_text(json.dumps(compile_rows(), indent=1))
