"""The stage-1 center constraint (``seda_fast/ops/center_loss.py`` <-> ``kernels/center_loss.py``): the
fused center-constraint loss + gradient against the eager reference.

On CPU the kernels run in Triton's interpreter (tests/conftest.py); grids stay at 1-19 programs.
The sm_90a compile check runs in a subprocess without the interpreter (it cannot compile).
"""
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from seda_fast import reference
from seda_fast.ops import center_loss as center_loss_ops
from seda_fast.ops.runtime import kernels
from helpers import case_ids, assert_flash_rule, assert_sm90_clean, compile_rows_in_subprocess, rel

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
K = kernels()


def _problem(B, C, d, seed=0, dtype=torch.float32):
    """Fresh ``(r [B, d], centers [C, d], labels [B])``; centers scaled so the softmax is soft."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(B, d, generator=g)
    mu = 0.25 * torch.randn(C, d, generator=g)
    y = torch.randint(0, C, (B,), generator=g)
    return r.to(DEVICE, dtype), mu.to(DEVICE, dtype), y.to(DEVICE)


def _reference(r, mu, y, tau, dtype=None):
    """Eager loss and dL/dr: ``F.cross_entropy(reference.center_logits(r, mu, tau), y)``."""
    r = r.detach().to(dtype or r.dtype).requires_grad_()
    loss = F.cross_entropy(reference.center_logits(r, mu.to(r.dtype), tau), y)
    loss.backward()
    return loss.detach(), r.grad


def _fused(r, mu, y, tau):
    r = r.detach().clone().requires_grad_()
    loss = center_loss_ops.center_loss(r, mu, y, tau)
    loss.backward()
    return loss.detach(), r.grad


PARITY_CASES = [
    (33, 7, 48, 1.0),
    (1, 7, 37, 0.5),
    (33, 300, 37, 2.0),   # 10 class tiles of 32
    (1, 300, 48, 1.0),
    (33, 1, 48, 1.0),     # one class: loss and gradient are exactly 0
]


@pytest.mark.parametrize("B,C,d,tau", PARITY_CASES, ids=case_ids("B,C,d,tau", PARITY_CASES))
def test_fp32_parity_with_reference_autograd(B, C, d, tau):
    r, mu, y = _problem(B, C, d)
    loss, grad = _fused(r, mu, y, tau)
    assert loss.dtype == torch.float32 and grad.dtype == r.dtype and grad.shape == r.shape
    ref_loss, ref_grad = _reference(r, mu, y, tau)
    ref64_loss, ref64_grad = _reference(r, mu, y, tau, torch.float64)
    if C == 1:
        assert loss.item() == 0.0 and ref_loss.item() == 0.0 and not grad.any()
        return
    for name, out, ref in (("loss", loss, ref_loss), ("grad", grad, ref_grad),
                           ("loss vs fp64", loss, ref64_loss), ("grad vs fp64", grad, ref64_grad)):
        assert rel(out, ref) < 1e-5, f"{name}: relative error {rel(out, ref):.2e}"


def test_per_row_losses_and_custom_upstream_gradient():
    """reduction='none' with a non-uniform upstream gradient (the backward scales row by row)."""
    r, mu, y = _problem(33, 19, 37, seed=3)
    w = torch.rand(33, device=DEVICE) + 0.5
    rf = r.clone().requires_grad_()
    rows = center_loss_ops.center_loss(rf, mu, y, 0.8, reduction="none")
    (rows * w).sum().backward()
    rr = r.clone().requires_grad_()
    ref_rows = F.cross_entropy(reference.center_logits(rr, mu, 0.8), y, reduction="none")
    (ref_rows * w).sum().backward()
    assert rel(rows, ref_rows) < 1e-5 and rel(rf.grad, rr.grad) < 1e-5
    assert rel(center_loss_ops.center_loss(r, mu, y, 0.8, reduction="sum"), ref_rows.sum()) < 1e-5


def _lowp_rule(dtype, B=33, C=300, d=48):
    """Kernel error <= 2 x (torch same-dtype error) + atol, both vs the fp32 reference on the same
    rounded inputs (flash-attention's rule)."""
    r, mu, y = _problem(B, C, d, seed=5, dtype=dtype)
    loss, grad = _fused(r, mu, y, 1.0)
    assert grad.dtype == dtype
    ref32_loss, ref32_grad = _reference(r.float(), mu.float(), y, 1.0)
    ref_lp_loss, ref_lp_grad = _reference(r, mu, y, 1.0)
    for name, out, r_lp, r32, atol in (("loss", loss, ref_lp_loss, ref32_loss, 1e-3),
                                      ("grad", grad, ref_lp_grad, ref32_grad, 1e-5)):
        assert_flash_rule(name, out, r_lp, r32, atol)


def test_fp16_flash_attention_rule():
    _lowp_rule(torch.float16)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="bf16 arithmetic and tl.dot are unreliable in the "
                    "Triton interpreter (CONVENTIONS.md): bf16 parity runs on the GPU")
@pytest.mark.parametrize("B", [33, 1000])  # both row blocks (mma.sync 16 rows, wgmma 64 rows)
def test_bf16_flash_attention_rule(B):
    _lowp_rule(torch.bfloat16, B=B, C=1000, d=512)


@pytest.mark.filterwarnings("ignore:Input #0 requires gradient and is not a double")
def test_finite_difference_gradcheck_fp32():
    """torch.autograd.gradcheck of the op in fp32 (the kernels are fp32-only). Central differences with
    eps = 1e-3: truncation ~ eps^2 |L'''| ~ 1e-5, rounding ~ ulp(L) / eps ~ 1e-4 for L ~ 1, so
    atol = 1e-3 and rtol = 1e-2 bound the method's own error; the fp64-reference comparison above is
    the tight check."""
    r, mu, y = _problem(3, 5, 6, seed=7)
    r.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: center_loss_ops.center_loss(x, mu, y, 0.9), (r,), eps=1e-3, atol=1e-3,
                                    rtol=1e-2, nondet_tol=0.0)


def test_opcheck_custom_ops():
    r, mu, y = _problem(5, 9, 20, seed=11)
    r.requires_grad_()
    torch.library.opcheck(center_loss_ops.center_loss_fwd, (r, mu, y, 0.7))
    _, lse = center_loss_ops.center_loss_fwd(r.detach(), mu, y, 0.7)
    torch.library.opcheck(center_loss_ops.center_loss_bwd, (torch.rand(5, device=DEVICE), r.detach(), mu, y, lse, 0.7))
    torch.library.opcheck(center_loss_ops.center_loss_train, (r, mu, y, 0.7))


def test_torch_compile_traces_without_graph_break():
    r, mu, y = _problem(9, 7, 37, seed=13)

    def step(x, centers, labels):
        return 3.0 * center_loss_ops.center_loss(torch.tanh(x), centers, labels, 0.5)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    x1, x2 = r.clone().requires_grad_(), r.clone().requires_grad_()
    l1, l2 = compiled(x1, mu, y), step(x2, mu, y)
    l1.backward()
    l2.backward()
    assert torch.equal(l1, l2) and torch.equal(x1.grad, x2.grad)


def test_launch_counts_and_determinism():
    """The mean's forward + backward = 1 launch (the gradient formed with the loss); per-row losses
    = 2 (forward, then backward from the upstream gradients); two runs are bitwise identical."""
    r, mu, y = _problem(33, 300, 37, seed=17)
    for reduction, names in (("mean", ["center_loss_train_kernel"]),
                             ("none", ["center_loss_fwd_kernel", "center_loss_bwd_kernel"])):
        runs = []
        for _ in range(2):
            x = r.clone().requires_grad_()
            with K.count_launches() as c:
                loss = center_loss_ops.center_loss(x, mu, y, 1.0, reduction=reduction)
                loss.sum().backward()
            assert c.names == names
            runs.append((loss, x.grad))
        for a, b in zip(*runs):
            assert torch.equal(a, b)


def test_double_backward_is_refused_not_silently_wrong():
    """The one-launch path saves its gradient, which has no derivative of its own: a second
    derivative through it raises (as the two-launch path's backward op, which has no autograd
    formula, does) rather than dropping the Hessian term."""
    r, mu, y = _problem(5, 4, 6, seed=23)
    x = r.clone().requires_grad_()
    (g,) = torch.autograd.grad(center_loss_ops.center_loss(x, mu, y, 0.7), x)  # first derivative: fine
    assert g.shape == x.shape
    with pytest.raises(RuntimeError, match="second derivative"):
        torch.autograd.grad(center_loss_ops.center_loss(x, mu, y, 0.7), x, create_graph=True)


def test_one_launch_gradient_equals_the_two_launch_one():
    """The mean's one-launch path (gradient formed in the forward, scaled by 1/B, times the upstream
    gradient) against the per-row forward and backward launches, with an upstream gradient of 0.3;
    and no gradient asked for: the plain forward, same loss."""
    r, mu, y = _problem(21, 19, 37, seed=19)
    x1, x2 = r.clone().requires_grad_(), r.clone().requires_grad_()
    one = center_loss_ops.center_loss(x1, mu, y, 0.7)
    two = center_loss_ops.center_loss(x2, mu, y, 0.7, reduction="none").mean()
    (0.3 * one).backward()
    (0.3 * two).backward()
    assert rel(one, two) < 1e-6 and rel(x1.grad, x2.grad) < 1e-6
    with torch.no_grad(), K.count_launches() as c:
        plain = center_loss_ops.center_loss(r, mu, y, 0.7)
    assert c.names == ["center_loss_fwd_kernel"] and rel(plain, one) < 1e-6


# --------------------------------------------------------------------------- argument checks

def _loss_args():
    r, mu, y = _problem(4, 5, 6, seed=29)
    return [r, mu, y, 1.0]


@pytest.mark.parametrize("index,bad,name", [
    (0, lambda t: t[0], "r"),                              # 1-D
    (0, lambda t: t.double(), "r"),                        # unsupported dtype
    (0, lambda t: t.t(), "r"),                             # not contiguous
    (1, lambda t: t[:, :-1].contiguous(), "centers"),      # width != d
    (1, lambda t: t.half(), "centers"),                    # dtype != r's
    (2, lambda t: t.float(), "labels"),
    (2, lambda t: t[:-1], "labels"),
    pytest.param(2, lambda t: t + 5, "labels",             # out of [0, C): checked on CPU only
                 marks=pytest.mark.skipif(DEVICE.type == "cuda", reason="range check would sync")),
    (3, lambda t: 0.0, "temperature"),
    (3, lambda t: float("nan"), "temperature"),
])
def test_center_loss_rejects_bad_input_before_launch(index, bad, name):
    args = _loss_args()
    args[index] = bad(args[index])
    for launcher in (K.center_loss_forward, lambda *a: K.center_loss_train(*a, 0.25)):
        with K.count_launches() as c, pytest.raises((ValueError, TypeError), match=name):
            launcher(*args)
        assert c.count == 0


def test_backward_launcher_rejects_bad_input_before_launch():
    r, mu, y, tau = _loss_args()
    _, lse = K.center_loss_forward(r, mu, y, tau)
    cases = [
        ("grad_loss", lambda: K.center_loss_backward(torch.ones(3, device=DEVICE), r, mu, y, lse, tau)),
        ("lse", lambda: K.center_loss_backward(torch.ones(4, device=DEVICE), r, mu, y, lse.half(), tau)),
        ("scale", lambda: K.center_loss_train(r, mu, y, tau, float("inf"))),
    ]
    for name, call in cases:
        with K.count_launches() as c, pytest.raises(ValueError, match=name):
            call()
        assert c.count == 0, name
    with pytest.raises(ValueError, match="reduction"):
        center_loss_ops.center_loss(r, mu, y, tau, reduction="avg")


# --------------------------------------------------------------------------- sm_90a compile

COMPILE_CASES = [  # (dtype, B, C, d): both row blocks (16 for B <= 256, 64 beyond), C = 10 and 1000
    ("bfloat16", 256, 10, 512), ("bfloat16", 4096, 1000, 512),
    ("float32", 256, 10, 512), ("float32", 4096, 1000, 512),
]


def compile_rows() -> list[dict]:
    """Capture every launch of the three launchers for :data:`COMPILE_CASES` and compile it for
    sm_90a (run without the interpreter) with ``compile_report.compile_launch``."""
    from seda_fast.tools import compile_report as cr
    rows, seen = [], set()
    for dtype, B, C, d in COMPILE_CASES:
        dt = getattr(torch, dtype)
        r, mu = torch.empty(B, d, dtype=dt), torch.empty(C, d, dtype=dt)
        y = torch.zeros(B, dtype=torch.int64)
        with K.capture_launches() as launches:
            K.center_loss_forward(r, mu, y, 1.0)
            K.center_loss_backward(torch.empty(B), r, mu, y, torch.empty(B), 1.0)
            K.center_loss_train(r, mu, y, 1.0, 1.0 / B)
        rows += cr.compile_unique(launches, dtype, seen, batch=B, classes=C, d=d)
    return rows


def test_sm90_compile_zero_spills(tmp_path):
    rows = compile_rows_in_subprocess(__file__, tmp_path / "rows.json")
    assert_sm90_clean(rows, ["center_loss_fwd_kernel", "center_loss_bwd_kernel", "center_loss_train_kernel"],
                      fields=("classes",))
    for r in rows:
        if r["dtype"] == "bfloat16" and r.get("BM") == 64:
            assert r["wgmma"], r  # Hopper's warpgroup MMA on the 64-row tiles
        if r["dtype"] == "bfloat16" and r.get("BM") == 16:
            assert r["mma_sync"], r


if __name__ == "__main__":  # the compile check's subprocess: python tests/ops/test_center_loss.py OUT.json
    Path(sys.argv[1]).write_text(json.dumps(compile_rows(), indent=1))
