"""Stage-1 center machinery (issue 4, first slice): the fused center-constraint loss + gradient and
the deterministic center EMA, against the eager reference.

On CPU the kernels run in Triton's interpreter (tests/conftest.py); grids stay at 1-19 programs.
The sm_90a compile check runs in a subprocess without the interpreter (it cannot compile).
"""
import json
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from seda_fast import fused, reference, training_ops as ops
from helpers import assert_flash_rule, assert_sm90_clean, compile_rows_in_subprocess, rel

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
K = fused.kernels()


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
    loss = ops.center_loss(r, mu, y, tau)
    loss.backward()
    return loss.detach(), r.grad


# --------------------------------------------------------------------------- center loss

@pytest.mark.parametrize("B,C,d,tau", [
    (33, 7, 48, 1.0),
    (1, 7, 37, 0.5),
    (33, 300, 37, 2.0),   # 10 class tiles of 32
    (1, 300, 48, 1.0),
    (33, 1, 48, 1.0),     # one class: loss and gradient are exactly 0
])
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
    rows = ops.center_loss(rf, mu, y, 0.8, reduction="none")
    (rows * w).sum().backward()
    rr = r.clone().requires_grad_()
    ref_rows = F.cross_entropy(reference.center_logits(rr, mu, 0.8), y, reduction="none")
    (ref_rows * w).sum().backward()
    assert rel(rows, ref_rows) < 1e-5 and rel(rf.grad, rr.grad) < 1e-5
    assert rel(ops.center_loss(r, mu, y, 0.8, reduction="sum"), ref_rows.sum()) < 1e-5


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
    assert torch.autograd.gradcheck(lambda x: ops.center_loss(x, mu, y, 0.9), (r,), eps=1e-3, atol=1e-3,
                                    rtol=1e-2, nondet_tol=0.0)


def test_opcheck_custom_ops():
    r, mu, y = _problem(5, 9, 20, seed=11)
    r.requires_grad_()
    torch.library.opcheck(ops.center_loss_fwd, (r, mu, y, 0.7))
    _, lse = ops.center_loss_fwd(r.detach(), mu, y, 0.7)
    torch.library.opcheck(ops.center_loss_bwd, (torch.rand(5, device=DEVICE), r.detach(), mu, y, lse, 0.7))
    torch.library.opcheck(ops.class_sums, (r.detach(), y, 9))
    sums, counts = ops.class_sums(r.detach(), y, 9)
    init = torch.zeros(9, dtype=torch.bool, device=DEVICE)
    torch.library.opcheck(ops.ema_update_, (mu.clone(), init, sums, counts, 0.9))


def test_torch_compile_traces_without_graph_break():
    r, mu, y = _problem(9, 7, 37, seed=13)

    def step(x, centers, labels):
        return 3.0 * ops.center_loss(torch.tanh(x), centers, labels, 0.5)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    x1, x2 = r.clone().requires_grad_(), r.clone().requires_grad_()
    l1, l2 = compiled(x1, mu, y), step(x2, mu, y)
    l1.backward()
    l2.backward()
    assert torch.equal(l1, l2) and torch.equal(x1.grad, x2.grad)


def test_launch_counts_and_determinism():
    """Forward + backward = 2 launches, center update = 2; two runs are bitwise identical."""
    r, mu, y = _problem(33, 300, 37, seed=17)
    runs = []
    for _ in range(2):
        x = r.clone().requires_grad_()
        centers, init = mu.clone(), torch.zeros(300, dtype=torch.bool, device=DEVICE)
        with K.count_launches() as c:
            loss = ops.center_loss(x, mu, y, 1.0)
            loss.backward()
            ops.update_centers(centers, init, r, y, 0.9)
        assert c.names == ["center_loss_fwd_kernel", "center_loss_bwd_kernel", "class_sums_kernel",
                           "ema_update_kernel"]
        runs.append((loss, x.grad, centers, init))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- center update

def _center_state(C, d, dtype):
    """What SeDA registers: ``centers`` zeros ``[C, d]`` and ``centers_initialized`` False ``[C]``."""
    return types.SimpleNamespace(config=types.SimpleNamespace(num_classes=C, center_momentum=0.9),
                                 centers=torch.zeros(C, d, dtype=dtype, device=DEVICE),
                                 centers_initialized=torch.zeros(C, dtype=torch.bool, device=DEVICE))


@pytest.mark.parametrize("C,d,dtype", [(7, 37, torch.float32), (300, 48, torch.float32),
                                       (7, 48, torch.float16)])
def test_center_update_bitwise_equal_to_reference(C, d, dtype):
    """Three batches: classes seen for the first time, classes absent, classes updated by the EMA.
    Bitwise on CPU: both sum each class's rows in batch order (MKL's sgemm does at these sizes; at
    B >= ~300 it blocks the batch dimension) and round the EMA's mul, mul, add and the IEEE division
    the same way. On CUDA cuBLAS picks its own order and ptxas may fuse the EMA's mul + add into an
    FMA: a few ulp."""
    ref, ours = _center_state(C, d, dtype), _center_state(C, d, dtype)
    g = torch.Generator().manual_seed(23)
    batches = [torch.randint(0, min(3, C), (33,), generator=g),   # first batch of classes 0-2
               torch.randint(0, C, (1,), generator=g),              # B = 1: one class, the rest absent
               torch.randint(0, C, (33,), generator=g)]
    for labels in batches:
        labels = labels.to(DEVICE)
        z = torch.randn(labels.shape[0], d, generator=g).to(DEVICE, dtype)
        reference.update_centers(ref, z, labels)
        ops.update_centers(ours.centers, ours.centers_initialized, z, labels, 0.9)
        assert torch.equal(ours.centers_initialized, ref.centers_initialized)
        sums, counts = ops.class_sums(z, labels, C)
        ref_sums, ref_counts = reference.class_sums(z, labels, C)
        assert torch.equal(counts, ref_counts)
        if DEVICE.type == "cuda":
            torch.testing.assert_close(ours.centers, ref.centers, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(sums, ref_sums, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(ours.centers, ref.centers), (ours.centers - ref.centers).abs().max()
            assert torch.equal(sums, ref_sums)
    assert 0 < int(ours.centers_initialized.sum()) < C or C == 7


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
    with K.count_launches() as c, pytest.raises(ValueError, match=name):
        K.center_loss_forward(*args)
    assert c.count == 0


def test_backward_and_update_launchers_reject_bad_input_before_launch():
    r, mu, y, tau = _loss_args()
    _, lse = K.center_loss_forward(r, mu, y, tau)
    sums, counts = K.class_sums(r, y, 5)
    init = torch.zeros(5, dtype=torch.bool, device=DEVICE)
    cases = [
        ("grad_loss", lambda: K.center_loss_backward(torch.ones(3, device=DEVICE), r, mu, y, lse, tau)),
        ("lse", lambda: K.center_loss_backward(torch.ones(4, device=DEVICE), r, mu, y, lse.half(), tau)),
        ("num_classes", lambda: K.class_sums(r, y, 0)),
        ("labels", lambda: K.class_sums(r, y.float(), 5)),
        ("z", lambda: K.class_sums(r.t(), y, 5)),
        ("initialized", lambda: K.ema_update(mu.clone(), init.float(), sums, counts, 0.9)),
        ("sums", lambda: K.ema_update(mu.clone(), init, sums[:, 1:].contiguous(), counts, 0.9)),
        ("counts", lambda: K.ema_update(mu.clone(), init, sums, counts.long(), 0.9)),
        ("momentum", lambda: K.ema_update(mu.clone(), init, sums, counts, 1.5)),
    ]
    for name, call in cases:
        with K.count_launches() as c, pytest.raises(ValueError, match=name):
            call()
        assert c.count == 0, name
    with pytest.raises(ValueError, match="reduction"):
        ops.center_loss(r, mu, y, tau, reduction="avg")


# --------------------------------------------------------------------------- sm_90a compile

COMPILE_CASES = [  # (dtype, B, C, d): both row blocks (16 for B <= 256, 64 beyond), C = 10 and 1000
    ("bfloat16", 256, 10, 512), ("bfloat16", 4096, 1000, 512),
    ("float32", 256, 10, 512), ("float32", 4096, 1000, 512),
]


def compile_rows() -> list[dict]:
    """Capture every launch of the four launchers for :data:`COMPILE_CASES` and compile it for
    sm_90a (run without the interpreter) with ``compile_report.compile_launch``."""
    from seda_fast import compile_report as cr
    rows, seen = [], set()
    for dtype, B, C, d in COMPILE_CASES:
        dt = getattr(torch, dtype)
        r, mu = torch.empty(B, d, dtype=dt), torch.empty(C, d, dtype=dt)
        y = torch.zeros(B, dtype=torch.int64)
        with K.capture_launches() as launches:
            _, lse = K.center_loss_forward(r, mu, y, 1.0)
            K.center_loss_backward(torch.empty(B), r, mu, y, torch.empty(B), 1.0)
            sums, counts = K.class_sums(r, y, C)
            K.ema_update(mu, torch.zeros(C, dtype=torch.bool), torch.empty(C, d), torch.empty(C), 0.9)
        rows += cr.compile_unique(launches, dtype, seen, batch=B, classes=C, d=d)
    return rows


def test_sm90_compile_zero_spills(tmp_path):
    rows = compile_rows_in_subprocess(__file__, tmp_path / "rows.json")
    assert_sm90_clean(rows, ["center_loss_fwd_kernel", "center_loss_bwd_kernel", "class_sums_kernel",
                             "ema_update_kernel"], fields=("classes",))
    for r in rows:
        if r["dtype"] == "bfloat16" and r.get("BM") == 64:
            assert r["wgmma"], r  # Hopper's warpgroup MMA on the 64-row tiles
        if r["dtype"] == "bfloat16" and r.get("BM") == 16:
            assert r["mma_sync"], r


if __name__ == "__main__":  # the compile check's subprocess: python tests/test_training_ops.py OUT.json
    Path(sys.argv[1]).write_text(json.dumps(compile_rows(), indent=1))


@pytest.mark.parametrize("C,d", [(7, 37), (20, 150)])
def test_class_sums_leave_out_non_finite_rows(C, d):
    """A row with a NaN or Inf in one feature adds nothing to its class's sum or count, in both
    backends (the one-hot matmul would otherwise spread 0 * NaN to every class): the sums equal those
    of the batch without those rows. d = 150: the bad feature lies in a later feature block than the
    first program's. The fused walk skips the rows, so it is bitwise the walk over the kept rows on CPU;
    eager multiplies zeroed rows, and MKL pairs the products of a 29-row and a 25-row matmul
    differently (seen: 6e-8), so eager gets fp32 rounding room."""
    g = torch.Generator().manual_seed(31)
    labels = torch.randint(0, C, (29,), generator=g).to(DEVICE)
    z = torch.randn(29, d, generator=g).to(DEVICE)
    bad = torch.tensor([0, 5, 6, 28], device=DEVICE)
    z[0, d - 1] = float("nan")
    z[5, 3] = float("inf")
    z[6, d // 2] = -float("inf")
    z[28] = float("nan")
    keep = torch.ones(29, dtype=torch.bool, device=DEVICE)
    keep[bad] = False
    for impl in (ops, reference):
        sums, counts = impl.class_sums(z, labels, C)
        want_sums, want_counts = impl.class_sums(z[keep], labels[keep], C)
        assert torch.isfinite(sums).all()
        assert torch.equal(counts, want_counts)
        if DEVICE.type == "cpu" and impl is ops:
            assert torch.equal(sums, want_sums)
        else:
            torch.testing.assert_close(sums, want_sums, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ops.class_sums(z, labels, C)[0], reference.class_sums(z, labels, C)[0],
                               rtol=1e-5, atol=1e-6)
