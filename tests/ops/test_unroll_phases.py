"""Stage-2 training unroll as phases: ``seda_fast.ops.unroll_phases`` / the
``seda_fast::unroll_phases_fwd`` and ``_bwd`` ops under both activation policies, forward and every
gradient against the eager loop of ``reference.translator_pfin_sample`` and its autograd.

On CPU the kernels run in Triton's interpreter (tests/conftest.py) on small grids; the sm_90a
compile check runs in a subprocess without the interpreter (it cannot compile).
"""
import json
import sys
from pathlib import Path

import pytest
import torch

from seda_fast.ops import unroll_phases as ops
from seda_fast.ops.runtime import kernels, launch_options
from helpers import (UNROLL_NAMES as NAMES, eager_unroll, run_unroll, unroll_problem, case_ids,
                     assert_unroll_entry_matches_sampler,
                     assert_compiled_step_matches, assert_directional_derivatives, assert_flash_rule,
                     assert_matches_reference, assert_sm90_clean, compile_rows_in_subprocess, rel)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
K = kernels()
U = K.unroll_phases_module
POLICIES = ops.POLICIES


def _phases(policy):
    def fused(x, m, cond, e_table, ddim, *weights):
        return ops.unroll_phases_fwd(x, m, cond, e_table, ddim, *weights, policy)[0]
    return fused


# odd widths, d > H and d < H, batch 1 and 33 (3 row blocks of 16), L = 1 to 3, K = 1 to 4
SHAPES = [(33, 20, 37, 3, 4), (1, 38, 37, 1, 1), (17, 22, 20, 1, 2), (5, 20, 70, 2, 3)]


# every shape saving; two recomputing (the policies are also compared bitwise below)
CASES = [(*shape, "save") for shape in SHAPES] + [(*SHAPES[1], "recompute"), (*SHAPES[3], "recompute")]


@pytest.mark.parametrize("B,d,H,L,steps,policy", CASES, ids=case_ids("B,d,H,L,steps,policy", CASES))
def test_fp32_parity_with_reference_autograd(B, d, H, L, steps, policy):
    """``m`` and all 17 gradients within 1e-5 of the fp32 reference's autograd and of the fp64 one."""
    inputs, ddim, weights, upstream = unroll_problem(B, d, H, L, steps, seed=B + L + steps)
    out = run_unroll(_phases(policy), inputs, ddim, weights, upstream)
    ref = run_unroll(eager_unroll, inputs, ddim, weights, upstream)
    ref64 = run_unroll(eager_unroll, inputs, ddim.double(), weights, upstream, torch.float64)
    assert_matches_reference(NAMES, out, ref, ref64, [None] + inputs + weights, L)


@pytest.mark.parametrize("policy", POLICIES)
def test_weight_gradients_split_over_rows(policy):
    """B = 130 rows: the weight-gradient reduction runs in 3 row splits (44, 44, 42 rows; each its own
    fp32 partial, summed in a fixed order), and every gradient still matches the reference."""
    B, d, H, L, steps = 130, 20, 19, 2, 2
    WBN, WBK, _ = U.wgrad_tiles(torch.float32, d, d)
    assert U.split_rows(B, U.wgrad_out_tiles(d, H, L - 1, (WBN, WBK))) == 3
    inputs, ddim, weights, upstream = unroll_problem(B, d, H, L, steps, seed=23)
    out = run_unroll(_phases(policy), inputs, ddim, weights, upstream)
    ref = run_unroll(eager_unroll, inputs, ddim, weights, upstream)
    ref64 = run_unroll(eager_unroll, inputs, ddim.double(), weights, upstream, torch.float64)
    assert_matches_reference(NAMES, out, ref, ref64, [None] + inputs + weights, L)


@pytest.mark.parametrize("tiles", [
    pytest.param(U.UNROLL_TILES[0][0], id="128x128-epi2"),
    pytest.param(U.WIDE_TILES, id="128x256-epi4"),
    pytest.param(U.UNROLL_TILES[1][0], id="128x64"),
    pytest.param(U.UNROLL_TILES[3][0], id="32x64"),
    pytest.param(U.PhaseTiles(16, 32, 16, 4, 2, epi_parts=2), id="16x32-epi2"),  # parts of 16: d=20, H=37 masked
])
def test_wide_and_split_epilogue_tile_parity(tiles):
    """The 128- and 32-row tiles bf16 batches take (forced here in fp32, 33 rows in one or two
    masked tiles), and a split epilogue over several column tiles, give the reference's ``m`` and
    gradients."""
    B, d, H, L, steps = 33, 20, 37, 2, 2
    inputs, ddim, weights, upstream = unroll_problem(B, d, H, L, steps, seed=31)
    m, xs, ms, acts = U.unroll_phases_forward(*inputs, ddim, *weights, tiles=tiles)
    grads = U.unroll_phases_backward(upstream, xs, ms, acts, inputs[2], inputs[3], ddim, *weights, tiles=tiles)
    ref = run_unroll(eager_unroll, inputs, ddim, weights, upstream)
    for name, o, r in zip(NAMES, (m, *grads), ref):
        if r is not None and r.numel():
            assert rel(o, r) < 1e-5, name


@pytest.mark.parametrize("policy", POLICIES)
def test_phases_on_two_tiles_in_one_call(policy, monkeypatch):
    """Each phase picks its own tile (:func:`row_tiles`): with the threshold lowered to fit a small
    problem, the phases with many tiles run on the wide tile (16 x 64, its epilogue in 4 parts) and
    the others on the call's (16 x 32), in one call, and ``m`` and every gradient still match the
    reference."""
    B, d, H, L, steps = 40, 38, 37, 2, 2
    tiles, wide = U.PhaseTiles(16, 32, 16, 4, 2), U.PhaseTiles(16, 64, 16, 4, 2, epi_parts=4)
    monkeypatch.setattr(U, "WIDE_NEED", 6)
    inputs, ddim, weights, upstream = unroll_problem(B, d, H, L, steps, seed=37)
    with K.capture_launches() as launches:
        U.unroll_phases_forward(*inputs, ddim, *weights, policy=policy, tiles=tiles, wide=wide)
    widths = {launch.meta["BN"] for launch in launches}
    assert widths == {32, 64}, widths  # both tiles ran (3 x 1 wide tiles: the O phase stays narrow)
    m, xs, ms, acts = U.unroll_phases_forward(*inputs, ddim, *weights, policy=policy, tiles=tiles, wide=wide)
    grads = U.unroll_phases_backward(upstream, xs, ms, acts, inputs[2], inputs[3], ddim, *weights, policy=policy,
                                     tiles=tiles, wide=wide)
    ref = run_unroll(eager_unroll, inputs, ddim, weights, upstream)
    for name, o, r in zip(NAMES, (m, *grads), ref):
        if r is not None and r.numel():
            assert rel(o, r) < 1e-5, name


def test_policies_agree_and_recompute_keeps_only_the_states():
    """"recompute" reruns each step's forward with the same kernels and tiles, and both policies
    reduce the weight gradients in the same order: ``m`` and every gradient are bitwise those of
    "save". It saves only ``xs``/``ms``: ``acts`` is empty, and :func:`saved_bytes` says so."""
    B, d, H, L, steps = 19, 20, 24, 2, 3
    inputs, ddim, weights, upstream = unroll_problem(B, d, H, L, steps, seed=3)
    save, rec = (run_unroll(_phases(p), inputs, ddim, weights, upstream) for p in POLICIES)
    for name, a, b in zip(NAMES, save, rec):
        assert torch.equal(a, b), name
    _, xs, ms, acts = ops.unroll_phases_fwd(*inputs, ddim, *weights, "recompute")
    assert acts.numel() == 0 and xs.shape == (steps, B, d) and ms.shape == (steps + 1, B, d)
    _, _, _, acts = ops.unroll_phases_fwd(*inputs, ddim, *weights, "save")
    item = acts.element_size()
    assert U.saved_bytes(B, d, H, L, steps, torch.float32, "save") == (xs.numel() + ms.numel() + acts.numel()) * item
    assert U.saved_bytes(B, d, H, L, steps, torch.float32, "recompute") == (xs.numel() + ms.numel()) * item


def test_module_entry_point_matches_translator_pfin_sample():
    """``unroll_phases(den, pfin, ...)`` from the model's own start state = the reference sampler,
    module parameter gradients included."""
    assert_unroll_entry_matches_sampler(lambda *a: ops.unroll_phases(*a, policy="recompute"))


def test_fp16_flash_attention_rule():
    """Kernel error <= 2 x (torch fp16 error) + atol, both vs the fp32 reference on the same rounded
    inputs; atol = 2^-10 max|ref| (one fp16 ulp at the tensor's scale: the final store's rounding)."""
    inputs, ddim, weights, upstream = unroll_problem(17, 48, 40, 2, 3, seed=5, dtype=torch.float16)
    out = run_unroll(_phases("save"), inputs, ddim, weights, upstream)
    ref16 = run_unroll(eager_unroll, inputs, ddim, weights, upstream)
    ref32 = run_unroll(eager_unroll, inputs, ddim, weights, upstream, torch.float32)
    for name, o, r16, r32 in zip(NAMES, out, ref16, ref32):
        assert o.dtype == torch.float16, name
        assert_flash_rule(name, o, r16, r32, 2.0 ** -10 * r32.abs().max().item())


def test_finite_difference_directional_derivatives_fp32():
    """The fused backward against central differences of the fused forward itself, per argument
    (the method and its bound: ``tests/ops/test_translator_unroll.py``'s test of the same name)."""
    inputs, ddim, weights, _ = unroll_problem(3, 5, 6, 2, 2, seed=7)
    g = torch.Generator().manual_seed(8)
    v = torch.randn(3, 5, generator=g).to(DEVICE)
    fused = _phases("recompute")
    grads = run_unroll(fused, inputs, ddim, weights, v)[1:]
    args = inputs + weights

    def loss(a):
        return (fused(*a[:4], ddim, *a[4:]).double() * v.double()).sum().item()
    assert_directional_derivatives(loss, args, grads, NAMES[1:], g)


def test_opcheck_custom_ops():
    inputs, ddim, weights, upstream = unroll_problem(3, 6, 7, 2, 2, seed=11)
    for policy in POLICIES:
        args = [t.clone().requires_grad_() for t in inputs]
        torch.library.opcheck(ops.unroll_phases_fwd,
                              (*args, ddim, *[w.clone().requires_grad_() for w in weights], policy))
        _, xs, ms, acts = ops.unroll_phases_fwd(*inputs, ddim, *weights, policy)
        torch.library.opcheck(ops.unroll_phases_bwd,
                              (upstream, xs, ms, acts, inputs[2], inputs[3], ddim, *weights, policy))


def test_torch_compile_traces_without_graph_break():
    inputs, ddim, weights, upstream = unroll_problem(9, 20, 24, 2, 2, seed=13)
    fused = _phases("save")

    def step(*args):
        m = fused(*args[:4], ddim, *args[4:])
        return (m * upstream).sum() + torch.tanh(m).sum()

    assert_compiled_step_matches(step, inputs + weights)


@pytest.mark.parametrize("L", [1, 3])
def test_launch_counts_and_determinism(L):
    """One launch per phase (forward K (L + 1) + 2; backward K (L + 2) + ceil(K / 2) + 1 under
    "save", whose weight-gradient phases reduce two steps each, K (2 L + 6) + 1 under
    "recompute"), each launch's grid the phase's tile count; two runs bitwise identical, every
    gradient included."""
    steps = 3  # "save": one weight-gradient phase of two steps, one of one
    inputs, ddim, weights, upstream = unroll_problem(17, 20, 19, L, steps, seed=17)  # 2 row blocks
    for policy in POLICIES:
        fwd, bwd = U.phase_counts(L, steps, policy)
        assert fwd == steps * (L + 1) + 2
        assert bwd == (steps * (L + 2) + 2 + 1 if policy == "save" else steps * (2 * L + 6) + 1)
        runs = []
        for _ in range(2):
            with K.count_launches() as c, launch_options(graph=False):  # on CUDA: no replay of a recurring call
                runs.append(run_unroll(_phases(policy), inputs, ddim, weights, upstream))
            assert c.names == ["unroll_phase_kernel"] * (fwd + bwd), policy
        for name, x, y in zip(NAMES, *runs):
            assert torch.equal(x, y), (policy, name)


def test_tile_picker():
    """fp32 and small batches take the inference picker's tile; larger fp16/bf16 batches the first
    of UNROLL_TILES with enough H-wide tiles (32 x 64 from 48, 64 x 64 from 64, 128 x 64 from 72,
    128 x 128 from 64); the weight gradients take 128 x 256 with a 128-row tile or a wave of
    them (the unroll's six jobs: 128 tiles; the diffusion term's three below the 128-row tile:
    128 x 128), and launch with 8 warps and 3 stages in fp16/bf16 whatever the activation tile's."""
    d, H = 512, 1024
    assert U.pick_unroll_tiles(4096, d, H, torch.float32) == U.pick_phase_tiles(4096, d, H, torch.float32)
    assert U.pick_unroll_tiles(64, d, H, torch.bfloat16) == U.pick_phase_tiles(64, d, H, torch.bfloat16)
    (wide, _), (mid128, _), (mid, _), (narrow, _) = U.UNROLL_TILES
    for B, want in ((65, narrow), (192, narrow), (193, mid), (256, mid), (512, mid), (513, mid128), (896, mid128),
                    (897, wide), (4096, wide)):
        assert U.pick_unroll_tiles(B, d, H, torch.bfloat16) == want, B
    assert (wide.BM, wide.BN, wide.BK, wide.num_warps, wide.num_stages, wide.epi_parts) == (128, 128, 64, 8, 3, 2)
    for B, unroll, denoise in ((4096, (128, 256), (128, 256)), (640, (128, 256), (128, 256)),
                               (256, (128, 256), (128, 128)), (64, (128, 256), (128, 128))):
        tiles = U.pick_unroll_tiles(B, d, H)
        assert U.wgrad_tiles(torch.bfloat16, d, H, 1, tiles)[:2] == unroll, B
        assert U.wgrad_tiles(torch.bfloat16, d, H, 1, tiles, n_jobs=3)[:2] == denoise, B
        w = U.wgrad_launch_tiles(tiles, torch.bfloat16)
        assert (w.BM, w.BN, w.BK, w.num_warps, w.num_stages) == (tiles.BM, tiles.BN, tiles.BK, 8, 3), B
    fp32 = U.pick_unroll_tiles(256, d, H, torch.float32)
    assert U.wgrad_tiles(torch.float32, d, H, 1, fp32)[:2] == (32, 32)
    assert U.wgrad_launch_tiles(fp32, torch.float32) == fp32


def test_wide_tiles_go_to_the_phases_that_fill_a_wave():
    """Over the 128 x 128 tile, a phase takes 128 x 256 when it has at least 96 of them: at B = 4096
    (default widths) every activation phase but those of a single d-wide job (32 x 2 = 64 tiles: an
    O phase alone, or PFIN's delta riding alone); none at B = 1024 (128 x 128 tiles, but at most
    8 x 4 = 32 of the wide ones per H-wide job), none over any other tile (B = 640: 128 x 64), and
    the weight-gradient phase never (it has its own tile)."""
    d, H, L, K2 = 512, 1024, 2, 10
    tiles, wide = U.call_tiles(None, None, 4096, d, H, torch.bfloat16)
    assert tiles == U.UNROLL_TILES[0][0] and wide == U.WIDE_TILES
    assert U.call_tiles(None, None, 640, d, H, torch.bfloat16)[1] is None
    assert U.call_tiles(None, None, 4096, d, H, torch.float32)[1] is None
    assert U.call_tiles(tiles, None, 4096, d, H, torch.bfloat16) == (tiles, None)  # given tiles: as given
    fwd, bwd = U.build_schedule(L, K2, "save")
    for row in fwd + bwd:
        got = U.row_tiles(row, 4096, d, H, L - 1, K2, tiles, wide)
        jobs = U.phase_jobs(row, 4096, d, H, L - 1)
        narrow = row[0] == U.W_GRAD or (len(jobs) == 1 and jobs[0][2] == d)
        assert got == (tiles if narrow else wide), (U.KIND_NAMES[row[0]], row)
    tiles, wide = U.call_tiles(None, None, 1024, d, H, torch.bfloat16)
    assert tiles == U.UNROLL_TILES[0][0] and wide == U.WIDE_TILES
    assert all(U.row_tiles(row, 1024, d, H, L - 1, K2, tiles, wide) == tiles for row in fwd + bwd)


def test_every_tile_of_a_phase_is_one_program():
    """The grids the launcher asks for are the tile counts the kernel decodes: a phase of ``n``
    jobs over ``[B, N_j]`` outputs gets ``sum_j cdiv(B, BM) cdiv(N_j, BN)`` programs, and the
    weight-gradient phase one program per (job, layer, row split, out tile, in tile)."""
    B, d, H, L, steps = 40, 38, 37, 2, 2
    inputs, ddim, weights, upstream = unroll_problem(B, d, H, L, steps, seed=19)
    with K.capture_launches() as launches:
        m, xs, ms, acts = U.unroll_phases_forward(*inputs, ddim, *weights, policy="save")
        U.unroll_phases_backward(upstream, xs, ms, acts, inputs[2], inputs[3], ddim, *weights, policy="save")
    tiles = U.pick_unroll_tiles(B, d, H, torch.float32)
    rb = -(-B // tiles.BM)
    th, td = rb * -(-H // tiles.BN), rb * -(-d // tiles.BN)
    fwd, bwd = U.build_schedule(L, steps, "save")
    want = {U.F_A: {th, th + td, th + th + td}, U.F_R: {th, th + td, td}, U.F_O: {td, 2 * td},
            U.B_P: {th, th + td, td}, U.B_M: {2 * td}, U.B_O: {th}, U.B_R: {th}}
    assert len(launches) == len(fwd + bwd)
    for launch, row in zip(launches, fwd + bwd):
        if row[0] != U.W_GRAD:
            assert launch.grid[0] in want[row[0]], (U.KIND_NAMES[row[0]], launch.grid)
    WBN, WBK, _ = U.wgrad_tiles(torch.float32, d, d)
    c = lambda n, b: -(-n // b)  # noqa: E731
    out_tiles = c(H, WBN) * c(d, WBK) + (L - 1) * c(H, WBN) * c(H, WBK) + 2 * c(d, WBN) * c(H, WBK) \
        + 2 * c(H + d, WBN) * c(d, WBK)
    assert U.wgrad_out_tiles(d, H, L - 1, (WBN, WBK)) == out_tiles
    splits = U.split_rows(B, out_tiles)
    w_grids = [launch.grid[0] for launch, row in zip(launches, fwd + bwd) if row[0] == U.W_GRAD]
    assert w_grids == [out_tiles * splits] * -(-steps // U.grad_slots(steps, "save"))


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 10])
@pytest.mark.parametrize("policy", POLICIES)
def test_weight_gradient_phases_cover_each_step_once(policy, steps):
    """Every step's weight gradients are reduced by exactly one W phase, which runs after the
    step's own backward phases and before any phase of an earlier step writes the G slot of a
    step it reads (step i in slot i % P, P = grad_slots: 2 under "save", 1 under "recompute"); the
    first W writes the partials, the later ones add to them (FLAG_ACC)."""
    L = 2
    P = U.grad_slots(steps, policy)
    assert P == (min(2, steps) if policy == "save" else 1)
    _, bwd = U.build_schedule(L, steps, policy)
    step_rows = {j: [q for q, r in enumerate(bwd) if r[0] in (U.B_P, U.B_M, U.B_O, U.B_R) and r[3] and r[1] == j]
                 for j in range(steps)}
    covered, first = [], True
    for pos, row in enumerate(bwd):
        if row[0] != U.W_GRAD:
            continue
        i, n, flags = row[1], row[4], row[6]
        assert 1 <= n <= P
        group = list(range(i, i + n))
        for j in group:  # after all of step j's phases; from its first to this W no other step writes
            # j's G slot, and no forward phase reruns into the activations this W reads
            assert max(step_rows[j]) < pos
            between = bwd[min(step_rows[j]):pos]
            assert all(r[1] == j or r[1] % P != j % P for r in between if r[0] != U.W_GRAD and r[3])
            assert not any(r[0] in (U.F_A, U.F_R, U.F_O) for r in between)
        assert bool(flags & U.FLAG_ACC) == (not first)
        covered += group
        first = False
    assert sorted(covered) == list(range(steps))


@pytest.mark.parametrize("L", [1, 2])
def test_a_recomputed_job_gets_its_forward_tile(L):
    """Under "recompute" each step's forward jobs run again, alone (no PFIN job riding): every job
    (A, R_l, O of a step; PFIN's PG and D of a step) gets the one tile it had in the forward, at the
    batches where a phase's width decides between the tiles, so the policies stay bitwise equal."""
    d, H, K2 = 512, 1024, 4
    fwd, bwd = U.build_schedule(L, K2, "recompute")
    for B in (1536, 2048, 3072, 4096, 6144):
        tiles, wide = U.call_tiles(None, None, B, d, H, torch.bfloat16)
        seen = {}
        for row in fwd + bwd:
            if row[0] not in (U.F_A, U.F_R, U.F_O):
                continue
            t = U.row_tiles(row, B, d, H, L - 1, K2, tiles, wide)
            if row[3]:
                seen.setdefault((row[0], row[1], row[2]), set()).add(t.BN)
            if row[4]:
                seen.setdefault(("PG" if row[0] == U.F_A else "D", row[5]), set()).add(t.BN)
        assert all(len(v) == 1 for v in seen.values()), (B, {k: v for k, v in seen.items() if len(v) > 1})
        assert {b for v in seen.values() for b in v} <= {128, 256}


# --------------------------------------------------------------------------- argument checks

def _args():
    inputs, ddim, weights, _ = unroll_problem(4, 6, 7, 2, 2, seed=29)
    return inputs + [ddim] + weights


def test_forward_rejects_bad_input_before_launch():
    """The shared checks of the row-block op (tested there one argument at a time) and the policy."""
    x, m, cond, e, ddim, *w = _args()
    cases = [("x_start", dict(), (x[0], m)), ("m_start", dict(), (x, m[:-1].contiguous())),
             ("policy", dict(policy="keep"), (x, m))]
    for name, kw, (x_, m_) in cases:
        with K.count_launches() as c, pytest.raises(ValueError, match=name):
            U.unroll_phases_forward(x_, m_, cond, e, ddim, *w, **kw)
        assert c.count == 0, name
    with pytest.raises(ValueError, match="policy"):
        ops.unroll_phases(None, None, x, m, cond, e, ddim, policy="all")


def test_backward_rejects_bad_input_before_launch():
    x, m, cond, e, ddim, *w = _args()
    _, xs, ms, acts = U.unroll_phases_forward(x, m, cond, e, ddim, *w, policy="save")
    cases = [("xs", (m, xs[:1].contiguous(), ms, acts), "save"), ("ms", (m, xs, ms[:-1].contiguous(), acts), "save"),
             ("ms", (m, xs, ms.half(), acts), "save"), ("grad_m", (m[:, 1:].contiguous(), xs, ms, acts), "save"),
             ("acts", (m, xs, ms, acts[:-1]), "save"), ("acts", (m, xs, ms, acts.half()), "save"),
             ("policy", (m, xs, ms, acts), "keep")]
    for name, (gm, xs_, ms_, acts_), policy in cases:
        with K.count_launches() as c, pytest.raises(ValueError, match=name):
            U.unroll_phases_backward(gm, xs_, ms_, acts_, cond, e, ddim, *w, policy=policy)
        assert c.count == 0, name


# --------------------------------------------------------------------------- sm_90a compile

COMPILE_CASES = [("bfloat16", 64), ("bfloat16", 128), ("bfloat16", 256), ("bfloat16", 640), ("bfloat16", 4096),
                 ("float32", 256)]
DEFAULT = dict(d=512, H=1024, L=2, K=10)


def compile_rows() -> list[dict]:
    """Capture both policies' forward and backward launches at the default size for
    :data:`COMPILE_CASES` and compile each distinct (kernel, dtype, meta) for sm_90a."""
    from seda_fast.tools import compile_report as cr
    d, H, L, steps = DEFAULT["d"], DEFAULT["H"], DEFAULT["L"], DEFAULT["K"]
    rows, seen = [], set()
    for dtype, B in COMPILE_CASES:
        dt = getattr(torch, dtype)
        e = lambda *shape: torch.empty(*shape, dtype=dt)  # noqa: E731
        w = [e(H, d), e(L - 1, H, H), e(L - 1, H), e(d, H), e(d), e(H, d), e(H, d), e(H), e(d, H), e(d), e(d, d),
             e(d, d), e(d)]
        with K.capture_launches() as launches:
            U.unroll_phases_forward(e(B, d), e(B, d), e(B, H), e(steps, H), torch.empty(steps, 2), *w)
            for policy in POLICIES:
                acts = e(U.saved_numel(B, d, H, L, steps, policy))
                U.unroll_phases_backward(e(B, d), e(steps, B, d), e(steps + 1, B, d), acts, e(B, H), e(steps, H),
                                         torch.empty(steps, 2), *w, policy=policy)
        rows += cr.compile_unique(launches, dtype, seen, batch=B)
    return rows


def test_sm90_compile_zero_spills(tmp_path):
    """Every phase kind of every shipped tile config (B = 64: 16-row tiles, 128: 32 x 64, 256:
    64 x 64, 640: 128 x 64, 4096: 128 x 128 with the split epilogue and 128 x 256 where
    :func:`row_tiles` widens; weight-gradient tiles 128 x 256 on 8 warps): no
    spills, within the register file and shared memory; bf16 phases use the tensor cores (wgmma at
    BM >= 64 and in the weight-gradient phase, mma.sync at BM = 16 and 32)."""
    rows = compile_rows_in_subprocess(__file__, tmp_path / "rows.json")
    assert_sm90_clean(rows, ["unroll_phase_kernel"], fields=("KIND",))
    assert {r["KIND"] for r in rows} == set(range(8))
    for r in rows:
        if r["dtype"] == "bfloat16":
            assert r["wgmma"] if (r["BM"] >= 64 or r["KIND"] == U.W_GRAD) else r["mma_sync"], r
            if r["KIND"] == U.W_GRAD:  # launched on its own warps (wgrad_launch_tiles), whatever the call's tile
                assert (r["num_warps"], r["num_stages"], r["WBN"], r["WBK"]) == (8, 3, 128, 256), r


if __name__ == "__main__":  # the compile check's subprocess: python tests/ops/test_unroll_phases.py OUT.json
    Path(sys.argv[1]).write_text(json.dumps(compile_rows(), indent=1))
