"""The center EMA (``seda_fast/ops/center_update.py`` <-> ``kernels/center_update.py``): deterministic
per-class sums and the in-place EMA, against the eager reference.

On CPU the kernels run in Triton's interpreter (tests/conftest.py). The sm_90a compile check runs
in a subprocess without the interpreter (it cannot compile).
"""
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from seda_fast import reference
from seda_fast.ops import center_update as center_update_ops
from seda_fast.ops.runtime import kernels
from helpers import case_ids, assert_sm90_clean, compile_rows_in_subprocess

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
K = kernels()


def _problem(B, C, d, seed=0, dtype=torch.float32):
    """Fresh ``(r [B, d], centers [C, d], labels [B])``; centers scaled so the softmax is soft."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(B, d, generator=g)
    mu = 0.25 * torch.randn(C, d, generator=g)
    y = torch.randint(0, C, (B,), generator=g)
    return r.to(DEVICE, dtype), mu.to(DEVICE, dtype), y.to(DEVICE)


def _center_state(C, d, dtype):
    """What SeDA registers: ``centers`` zeros ``[C, d]`` and ``centers_initialized`` False ``[C]``."""
    return types.SimpleNamespace(config=types.SimpleNamespace(num_classes=C, center_momentum=0.9),
                                 centers=torch.zeros(C, d, dtype=dtype, device=DEVICE),
                                 centers_initialized=torch.zeros(C, dtype=torch.bool, device=DEVICE))


UPDATE_CASES = [(7, 37, torch.float32), (300, 48, torch.float32),
                (7, 48, torch.float16)]


@pytest.mark.parametrize("C,d,dtype", UPDATE_CASES, ids=case_ids("C,d,dtype", UPDATE_CASES))
def test_center_update_bitwise_equal_to_reference(C, d, dtype):
    """Three batches: classes seen for the first time, classes absent, classes updated by the EMA.
    Bitwise on CPU: both sum each class's rows in batch order (MKL's sgemm does at these sizes; at
    B >= ~300 it blocks the batch dimension) and round the EMA's mul, mul, add and the IEEE division
    the same way. On CUDA cuBLAS picks its own order and ptxas may fuse the EMA's mul + add into an
    FMA: a few ulp. The one-launch update and the two-launch one (sums, then the EMA) are bitwise
    equal everywhere: the same walk and the same EMA code. B = 33 spans two blocks of rows."""
    ref, ours, two = _center_state(C, d, dtype), _center_state(C, d, dtype), _center_state(C, d, dtype)
    g = torch.Generator().manual_seed(23)
    batches = [torch.randint(0, min(3, C), (33,), generator=g),   # first batch of classes 0-2
               torch.randint(0, C, (1,), generator=g),              # B = 1: one class, the rest absent
               torch.randint(0, C, (33,), generator=g)]
    for labels in batches:
        labels = labels.to(DEVICE)
        z = torch.randn(labels.shape[0], d, generator=g).to(DEVICE, dtype)
        reference.update_centers(ref, z, labels)
        center_update_ops.update_centers(ours.centers, ours.centers_initialized, z, labels, 0.9)
        sums, counts = center_update_ops.class_sums(z, labels, C)  # the two-launch (distributed) path
        center_update_ops.ema_update_(two.centers, two.centers_initialized, sums, counts, 0.9)
        assert torch.equal(two.centers, ours.centers) and torch.equal(two.centers_initialized, ours.centers_initialized)
        assert torch.equal(ours.centers_initialized, ref.centers_initialized)
        ref_sums, ref_counts = reference.class_sums(z, labels, C)
        assert torch.equal(counts, ref_counts)
        if DEVICE.type == "cuda":
            torch.testing.assert_close(ours.centers, ref.centers, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(sums, ref_sums, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(ours.centers, ref.centers), (ours.centers - ref.centers).abs().max()
            assert torch.equal(sums, ref_sums)
    assert 0 < int(ours.centers_initialized.sum()) < C or C == 7


def test_row_splits_past_R_rows():
    """Past ``R`` rows the update is two launches: each split's sums (R rows, a multiple of the
    walk's block), then their reduction in split order and the EMA. Forced at R = 32 on 70 rows (3
    splits, the last one short): the splits add the same rows in another association, so against
    the reference (and the one-launch path) the sums agree to fp32 rounding; counts and flags
    exactly; two runs bitwise; the distributed path's class_sums (torch.sum over the splits) too."""
    C, d = 7, 37
    g = torch.Generator().manual_seed(41)
    z = torch.randn(70, d, generator=g).to(DEVICE)
    labels = torch.randint(0, C, (70,), generator=g).to(DEVICE)
    assert K.center_update.update_blocks(C, d)["RB"] == 32
    ref = _center_state(C, d, torch.float32)
    ref.centers += torch.randn(C, d, generator=g).to(DEVICE)
    ref.centers_initialized[: C // 2] = True
    runs = []
    for _ in range(2):
        ours = _center_state(C, d, torch.float32)
        ours.centers.copy_(ref.centers)
        ours.centers_initialized.copy_(ref.centers_initialized)
        with K.count_launches() as c:
            K.center_ema(ours.centers, ours.centers_initialized, z, labels, 0.9, rows_per_split=32)
        assert c.names == ["class_sums_kernel", "ema_update_kernel"]
        runs.append(ours)
    reference.update_centers(ref, z, labels)
    assert torch.equal(runs[0].centers, runs[1].centers)
    assert torch.equal(runs[0].centers_initialized, ref.centers_initialized)
    torch.testing.assert_close(runs[0].centers, ref.centers, rtol=1e-5, atol=1e-6)
    sums, counts = K.class_sums(z, labels, C, rows_per_split=32)
    ref_sums, ref_counts = reference.class_sums(z, labels, C)
    assert torch.equal(counts, ref_counts)
    torch.testing.assert_close(sums, ref_sums, rtol=1e-5, atol=1e-6)


def test_opcheck_custom_ops():
    r, mu, y = _problem(5, 9, 20, seed=11)
    torch.library.opcheck(center_update_ops.class_sums, (r, y, 9))
    sums, counts = center_update_ops.class_sums(r, y, 9)
    init = torch.zeros(9, dtype=torch.bool, device=DEVICE)
    torch.library.opcheck(center_update_ops.ema_update_, (mu.clone(), init, sums, counts, 0.9))
    torch.library.opcheck(center_update_ops.center_ema_, (mu.clone(), init.clone(), r, y, 0.9))


def test_launch_counts_and_determinism():
    """The center update = 1 launch (2 with an all-reduce between: the distributed path); two runs
    are bitwise identical."""
    r, mu, y = _problem(33, 300, 37, seed=17)
    runs = []
    for _ in range(2):
        centers, init = mu.clone(), torch.zeros(300, dtype=torch.bool, device=DEVICE)
        with K.count_launches() as c:
            center_update_ops.update_centers(centers, init, r, y, 0.9)
        assert c.names == ["center_ema_kernel"]
        runs.append((centers, init))
    with K.count_launches() as c:
        center_update_ops.ema_update_(mu.clone(), init, *center_update_ops.class_sums(r, y, 300), 0.9)
    assert c.names == ["class_sums_kernel", "ema_update_kernel"]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_launchers_reject_bad_input_before_launch():
    r, mu, y = _problem(4, 5, 6, seed=29)
    sums, counts = K.class_sums(r, y, 5)
    init = torch.zeros(5, dtype=torch.bool, device=DEVICE)
    cases = [
        ("num_classes", lambda: K.class_sums(r, y, 0)),
        ("labels", lambda: K.class_sums(r, y.float(), 5)),
        ("z", lambda: K.class_sums(r.t(), y, 5)),
        ("initialized", lambda: K.ema_update(mu.clone(), init.float(), sums, counts, 0.9)),
        ("sums", lambda: K.ema_update(mu.clone(), init, sums[:, 1:].contiguous(), counts, 0.9)),
        ("counts", lambda: K.ema_update(mu.clone(), init, sums, counts.long(), 0.9)),
        ("momentum", lambda: K.ema_update(mu.clone(), init, sums, counts, 1.5)),
        ("labels", lambda: K.center_ema(mu.clone(), init, r, y[:3], 0.9)),
        ("z", lambda: K.center_ema(mu.clone(), init, r[:, :5], y, 0.9)),
        ("initialized", lambda: K.center_ema(mu.clone(), init[:4], r, y, 0.9)),
        ("momentum", lambda: K.center_ema(mu.clone(), init, r, y, -0.1)),
        ("rows_per_split", lambda: K.center_ema(mu.clone(), init, r, y, 0.9, rows_per_split=0)),
        ("sums", lambda: K.ema_update(mu.clone(), init, sums[None].half(), counts[None], 0.9)),
        ("counts", lambda: K.ema_update(mu.clone(), init, sums[None], counts, 0.9)),
        ("65536 wide", lambda: K.class_sums(torch.zeros(1, 65537, device=DEVICE), y[:1], 5)),
        ("65535", lambda: K.class_sums(torch.zeros(65536, 6, device=DEVICE),
                                       torch.zeros(65536, dtype=torch.int64, device=DEVICE), 5, rows_per_split=1)),
    ]
    for name, call in cases:
        with K.count_launches() as c, pytest.raises((ValueError, TypeError), match=name):
            call()
        assert c.count == 0, name


NON_FINITE_CASES = [(7, 37), (20, 150)]


@pytest.mark.parametrize("C,d", NON_FINITE_CASES, ids=case_ids("C,d", NON_FINITE_CASES))
def test_class_sums_leave_out_non_finite_rows(C, d):
    """A row with a NaN or Inf in one feature adds nothing to its class's sum or count, in both
    backends (the one-hot matmul would otherwise spread 0 * NaN to every class): the sums equal those
    of the batch without those rows, and so does the one-launch EMA. 45 rows: two blocks of rows;
    d = 150: the padded tail of a row is masked. The fused walk skips the rows, so it is bitwise the
    walk over the kept rows on CPU; eager multiplies zeroed rows, and MKL pairs the products of a
    45-row and a 41-row matmul differently (seen: 6e-8), so eager gets fp32 rounding room."""
    g = torch.Generator().manual_seed(31)
    labels = torch.randint(0, C, (45,), generator=g).to(DEVICE)
    z = torch.randn(45, d, generator=g).to(DEVICE)
    bad = torch.tensor([0, 5, 6, 44], device=DEVICE)
    z[0, d - 1] = float("nan")
    z[5, 3] = float("inf")
    z[6, d // 2] = -float("inf")
    z[44] = float("nan")
    keep = torch.ones(45, dtype=torch.bool, device=DEVICE)
    keep[bad] = False
    for impl in (center_update_ops, reference):
        sums, counts = impl.class_sums(z, labels, C)
        want_sums, want_counts = impl.class_sums(z[keep], labels[keep], C)
        assert torch.isfinite(sums).all()
        assert torch.equal(counts, want_counts)
        if DEVICE.type == "cpu" and impl is center_update_ops:
            assert torch.equal(sums, want_sums)
        else:
            torch.testing.assert_close(sums, want_sums, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(center_update_ops.class_sums(z, labels, C)[0], reference.class_sums(z, labels, C)[0],
                               rtol=1e-5, atol=1e-6)
    states = [_center_state(C, d, torch.float32) for _ in range(2)]
    for state, (rows, y) in zip(states, [(z, labels), (z[keep], labels[keep])]):
        center_update_ops.center_ema_(state.centers, state.centers_initialized, rows, y, 0.9)
    assert torch.isfinite(states[0].centers).all()
    assert torch.equal(states[0].centers, states[1].centers)
    assert torch.equal(states[0].centers_initialized, states[1].centers_initialized)


# --------------------------------------------------------------------------- sm_90a compile

COMPILE_CASES = [("bfloat16", 256, 10, 512), ("bfloat16", 4096, 10, 512), ("bfloat16", 4096, 1000, 512),
                 ("float32", 256, 1000, 512), ("float32", 4096, 1000, 512)]  # B = 4096: the split path


def compile_rows() -> list[dict]:
    """Capture the three launchers' launches for :data:`COMPILE_CASES` and compile them for sm_90a."""
    from seda_fast.tools import compile_report as cr
    rows, seen = [], set()
    for dtype, B, C, d in COMPILE_CASES:
        dt = getattr(torch, dtype)
        r, mu = torch.empty(B, d, dtype=dt), torch.empty(C, d, dtype=dt)
        y = torch.zeros(B, dtype=torch.int64)
        with K.capture_launches() as launches:
            K.class_sums(r, y, C)
            K.ema_update(mu, torch.zeros(C, dtype=torch.bool), torch.empty(C, d), torch.empty(C), 0.9)
            K.center_ema(mu, torch.zeros(C, dtype=torch.bool), r, y, 0.9)
        rows += cr.compile_unique(launches, dtype, seen, batch=B, classes=C, d=d)
    return rows


def test_sm90_compile_zero_spills(tmp_path):
    rows = compile_rows_in_subprocess(__file__, tmp_path / "rows.json")
    assert_sm90_clean(rows, ["class_sums_kernel", "ema_update_kernel", "center_ema_kernel"], fields=("classes",))


if __name__ == "__main__":  # the compile check's subprocess: python tests/ops/test_center_update.py OUT.json
    Path(sys.argv[1]).write_text(json.dumps(compile_rows(), indent=1))
