"""The training-step cost model (seda_fast/tools/cost_training.py): its counts follow the eager step
by construction, the policies differ only where they should, and the table and targets print."""
import contextlib
import io
import re
from dataclasses import replace
from pathlib import Path

import pytest

from seda_fast import presets
from seda_fast.tools import cost_training as ct
from seda_fast.tools.cost_model import H200


def _cfg():
    return presets.config("small", translator_steps=3, learner_steps=2)  # d = 48, H = 80, L = 3


def test_per_step_forward_is_one_translator_and_pfin_step():
    """The difference of two recordings is exactly one unroll step's GEMMs: the denoiser (W_x, the
    L - 1 residual layers, W_o) and PFIN (W_pm, W_pu, W_gm, W_gu, W_pd), in their data order."""
    cfg, B = _cfg(), 11
    d, H, L = cfg.dim, cfg.hidden, cfg.layers
    jobs, saved = ct.per_step_forward(cfg, B, "float32")
    shapes = sorted(mnk for _, mnk in jobs)
    want = sorted([(B, H, d)] + [(B, H, H)] * (L - 1) + [(B, d, H)] + [(B, H, d)] * 2 + [(B, d, d)] * 2
                  + [(B, d, H)])
    assert shapes == want
    depth = {mnk: dep for dep, mnk in jobs if mnk == (B, H, H)}
    assert min(dep for dep, _ in jobs) == 0 and max(dep for dep, _ in jobs) == L + 2  # A, R x (L-1), O, P, D
    assert depth and saved > 2 * B * d * 4  # the step saves more than the recompute policy keeps


@pytest.mark.parametrize("stage", ct.STAGES)
def test_backward_recorded_and_flops_add_up(stage):
    cfg, B = _cfg(), 9
    rec = ct.step_ops(cfg, B, stage, "float32")
    fwd, bwd = rec.ops[:rec.n_forward], rec.ops[rec.n_forward:]
    f_fwd = sum(o.flops for o in fwd if o.mnk)
    f_bwd = sum(o.flops for o in bwd if o.mnk)
    assert f_fwd > 0 and f_fwd < f_bwd <= 2 * f_fwd  # gradients of activations and weights, at most 2x
    assert min(o.depth for o in bwd if o.mnk) > max(o.depth for o in fwd)  # the backward follows the loss
    phases = ct.phases_of(rec.ops)
    assert sum(len(p.jobs) for p in phases) == sum(1 for o in rec.ops if o.mnk)


def test_policies():
    cfg, B = _cfg(), 9
    rec = ct.step_ops(cfg, B, 2, "bfloat16")
    save = ct.predict(cfg, B, 2, "phases-save", record=rec)
    rec_ = ct.predict(cfg, B, 2, "phases-recompute", record=rec)
    step_jobs, step_saved = ct.per_step_forward(cfg, B, "bfloat16")
    levels = len({dep for dep, _ in step_jobs})
    assert rec_.counts["phases"] == save.counts["phases"] + cfg.translator_steps * levels
    one_step = [ct.Phase(((m, n, k),)) for _, (m, n, k) in step_jobs]
    extra = cfg.translator_steps * sum(ct._phase_cost(p, B, "bfloat16", cfg, ct.H200, False)[1] for p in one_step)
    assert rec_.counts["flops"] == pytest.approx(save.counts["flops"] + extra)  # as the tiles execute them
    assert rec_.counts["saved_bytes"] == save.counts["saved_bytes"] - cfg.translator_steps * (
        step_saved - 2 * B * cfg.dim * 2)
    assert rec_.time_s > save.time_s
    one = ct.step_ops(cfg, B, 1, "bfloat16")  # stage 1 has no loop: the policies agree
    a, b = (ct.predict(cfg, B, 1, impl, record=one) for impl in ("phases-save", "phases-recompute"))
    assert (a.time_s, a.counts) == (b.time_s, b.counts)


def test_baselines_and_bad_arguments():
    cfg, B = _cfg(), 9
    rec = ct.step_ops(cfg, B, 2, "bfloat16")
    eager = ct.predict(cfg, B, 2, "eager", record=rec)
    assert eager.bound == "host" and eager.time_s == pytest.approx(len(rec.ops) * 5e-6 + 25e-6)  # + the label check
    assert ct.predict(cfg, B, 2, "torch_compile", record=rec).time_s < eager.time_s
    with pytest.raises(ValueError, match="impl"):
        ct.predict(cfg, B, 2, "jit", record=rec)
    with pytest.raises(ValueError, match="policy"):
        ct.predict_phases(cfg, B, 2, "keep", record=rec)
    with pytest.raises(ValueError, match="stage"):
        ct.step_ops(cfg, B, 3)


def test_label_check_is_priced_as_a_user_step_runs_it():
    """A step through the model runs the label range check the recorded reference loss skips: issued
    from Python its measured-or-assumed cost, in a CUDA graph its four kernels, under torch.compile
    nothing (skipped while tracing)."""
    cfg, B = _cfg(), 9
    rec = ct.step_ops(cfg, B, 1, "bfloat16")
    slow = replace(H200, label_check_s=1e-3)
    assert ct.LABEL_CHECK_KERNELS == 4  # clamp, eq, all, assert: tests/core/test_training_graph.py counts them
    for impl, extra in (("eager", H200.label_check_s), ("unroll-phases-save", H200.label_check_s),
                        ("unroll-phases-save-graph", 4 * H200.graph_boundary_s),
                        ("rowblock-graph", 4 * H200.graph_boundary_s), ("torch_compile", 0.0)):
        p, q = ct.predict(cfg, B, 1, impl, record=rec), ct.predict(cfg, B, 1, impl, ceilings=slow, record=rec)
        assert p.terms.get("labels", 0.0) == pytest.approx(extra), impl
        issued = impl in ("eager", "unroll-phases-save")
        assert q.time_s - p.time_s == pytest.approx(1e-3 - extra if issued else 0.0, abs=1e-12), impl


@pytest.fixture(scope="module")
def default_report() -> tuple[str, list[dict]]:
    """What ``python -m seda_fast cost-training`` prints (the default config's table and targets), and
    the rows it printed them from."""
    out, seen = io.StringIO(), []
    comparison = ct.comparison
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setattr(ct, "comparison", lambda *a, **k: seen.append(comparison(*a, **k)) or seen[-1])
        assert ct.main(["--dtype", "bfloat16"]) == 0
    return out.getvalue(), seen[0]


def test_table_and_targets(default_report):
    rows = ct.comparison(_cfg(), batches=(8,))
    assert {r["impl"] for r in rows} == set(ct.IMPLS) and {r["stage"] for r in rows} == set(ct.STAGES)
    text = ct.table(rows)
    assert text.count("| phases-recompute |") == 2
    lines = ct.target_lines(rows)
    assert any("stage 2, B=8: recompute saves" in ln for ln in lines)
    printed = default_report[0]
    assert "| 2 | 4096 | phases-save |" in printed and "target 1.2x" in printed


# README's training prediction table: its columns, left to right, after stage and B
README_COLUMNS = ("eager", "torch_compile", "rowblock", "rowblock-graph", "unroll-phases-save-raw",
                  "unroll-phases-save", "unroll-phases-save-graph", "unroll-phases-recompute-graph", "phases-save")


def test_readme_training_table_is_what_the_tool_prints(default_report):
    """Every cell of README's training prediction table is the tool's figure, rounded to the digits
    README shows, with the tool's bound (docs that match the code)."""
    printed = {(r["stage"], r["batch"], r["impl"]): (r["time_s"] * 1e3, r["bound"]) for r in default_report[1]}
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    head = "| stage | B | eager | torch.compile | row blocks | row blocks, one graph |"
    assert readme.count(head) == 1
    body = readme[readme.index(head):].splitlines()[2:]
    rows = body[:body.index("")]
    assert [tuple(int(c) for c in ln.strip("|").split("|")[:2]) for ln in rows] == [(1, 256), (1, 4096),
                                                                                    (2, 256), (2, 4096)]
    for line in rows:
        stage, batch, *cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(README_COLUMNS), line
        for impl, cell in zip(README_COLUMNS, cells):
            key = (int(stage), int(batch), impl)
            if cell == "as save (no unroll)":
                assert key[0] == 1 and key not in printed
                continue
            shown, bound = re.fullmatch(r"([0-9.]+) \((\w+)\)", cell).groups()
            ms, tool_bound = printed[key]
            decimals = len(shown.partition(".")[2])
            assert (f"{ms:.{decimals}f}", bound) == (shown, tool_bound), (key, cell, ms)


def test_rowblock_counts_are_the_shipped_ops():
    """The row-block prediction's launches are the training ops' own (the same count the launch
    hook sees in tests/core/test_training_graph.py), its host term is priced per op and launch, and
    capturing the step in a graph removes the host term."""
    cfg, B = _cfg(), 9
    K = cfg.translator_steps
    n_ops, n_glue, n_launches = ct.fused_step_counts(cfg, 2)
    assert n_launches == 3 + 1 + 3 + K * (1 + 5) and n_ops > n_launches  # L = 3: 3 x0-loss wgrad launches
    assert 0 < n_glue < n_ops  # views (t, detach, view...) and the custom ops themselves launch no glue kernel
    assert ct.fused_step_counts(cfg, 1)[2] == 4 + 3  # the center EMA, the center loss, the x0 loss forward and backward; 3 wgrad launches
    rec = ct.step_ops(cfg, B, 2, "bfloat16")
    raw = ct.predict(cfg, B, 2, "rowblock", record=rec)
    graphed = ct.predict(cfg, B, 2, "rowblock-graph", record=rec)
    assert raw.terms["host"] == pytest.approx(n_ops * 5e-6 + n_launches * 20e-6)
    assert graphed.terms["sync"] == pytest.approx(20e-6 + (n_glue + n_launches) * 1.3e-6)
    assert "host" not in graphed.terms and graphed.time_s <= raw.time_s + 20e-6  # + the replay's launch
    step_flops = sum(2.0 * m * n * k for _, (m, n, k) in ct.per_step_forward(cfg, B, "bfloat16")[0])
    eager_flops = sum(o.flops for o in rec.ops if o.mnk)
    assert raw.counts["flops"] == pytest.approx(eager_flops + K * step_flops)  # the backward recomputes each step


@pytest.mark.parametrize("policy", ["save", "recompute"])
def test_phase_unroll_prediction_follows_the_kernels_schedule(policy):
    """The shipped phase path is costed from the kernels' own schedules: one cost row per phase of
    ``kernels.unroll_phases.build_schedule`` and of ``kernels.denoise_phases.build_schedule`` (beside
    the semantic prefix's), the launch count is the step's as the launch hook sees it (the semantic
    prefix as one graph replay), and the step's FLOPs are the glue's matmuls' plus the phases'."""
    from seda_fast.ops.runtime import kernels
    U, IP, D = kernels().unroll_phases_module, kernels().infer_phases_module, kernels().denoise_phases_module
    cfg, B = _cfg(), 9
    K, L = cfg.translator_steps, cfg.layers
    fwd, bwd = U.phase_counts(L, K, policy)
    n_ops, _, n_launches = ct.fused_step_counts(cfg, 2, f"phases-{policy}")
    assert n_launches == 1 + sum(D.phase_counts(L)) + fwd + bwd  # semantic replay, diffusion term, unroll
    rows = ct.unroll_phase_costs(cfg, B, policy)
    assert len(rows) == fwd + bwd and all(r["time_s"] > 0 for r in rows)
    den = ct.denoise_phase_costs(cfg, B)
    assert len(den) == sum(D.phase_counts(L)) and all(r["time_s"] > 0 for r in den)
    sem = ct.semantic_phase_costs(cfg, B)
    assert len(sem) == IP.semantic_phase_count(L, cfg.learner_steps, IP.use_fold(B))
    p = ct.predict(cfg, B, 2, f"unroll-phases-{policy}")
    assert p.counts["phases"] == len(sem) + len(den) + len(rows) and p.counts["launches"] == n_launches
    assert p.counts["glue_s"] > 0 and p.counts["flops"] > sum(r["flops"] for r in rows + den + sem)
    # issued from Python: the semantic prefix's replay and one replay per phase range (the diffusion
    # term's and the unroll's forward and backward); "-raw": one Python launch per phase
    assert p.counts["host_launches"] == ct.fused_step_ops(cfg, 2, f"phases-{policy}")[4] == 5
    raw = ct.predict(cfg, B, 2, f"unroll-phases-{policy}-raw")
    assert raw.counts["host_launches"] == n_launches
    assert raw.terms["host"] - p.terms["host"] == pytest.approx((n_launches - 5) * ct.H200.launch_s)


def test_stage1_phase_prediction_follows_the_diffusion_terms_schedule():
    """Stage 1 on phases: the diffusion term's own schedule, the launch count the hook sees (the
    center EMA, the center loss with its gradient, the term's L + 1 + L + 1 phases), and the glue's
    FLOPs (the center constraint's ``dL/da`` joins the term's phases: no matmul of its own)."""
    from seda_fast.ops.runtime import kernels
    D = kernels().denoise_phases_module
    cfg, B = _cfg(), 9
    _, _, n_launches = ct.fused_step_counts(cfg, 1, "phases-save")
    assert n_launches == 2 + sum(D.phase_counts(cfg.layers))
    p = ct.predict(cfg, B, 1, "unroll-phases-save")
    den = ct.denoise_phase_costs(cfg, B)
    assert p.counts["phases"] == len(den) and p.counts["launches"] == n_launches
    assert p.counts["host_launches"] == 2 + 2  # the center ops' launches, the term's two replays
    assert p.counts["flops"] > sum(r["flops"] for r in den)
    big = presets.config("default")  # where the phases beat the row blocks' per-program weight streams
    assert ct.predict(big, 256, 1, "unroll-phases-save-graph").time_s < ct.predict(big, 256, 1, "rowblock-graph").time_s


def test_center_ema_cost_follows_the_launcher():
    """The center EMA's modelled walk (two L2 round trips per block of RB rows, at most R rows a
    program) and its second launch past R rows, against the launcher's own blocks and launches."""
    import torch
    from seda_fast.ops.runtime import kernels
    K = kernels()
    cfg = presets.config("default")
    blocks = K.center_update.update_blocks(cfg.num_classes, cfg.dim)
    lat = ct.H200.l2_latency_s
    assert ct.center_ema_cost(cfg, 256) == (2 * -(-256 // blocks["RB"]) * lat, 0, 0)
    R = blocks["R"]
    for B, launches in ((R, 1), (R + 1, 2)):
        with K.capture_launches(keep_args=False) as got:
            K.center_ema(torch.empty(cfg.num_classes, cfg.dim), torch.zeros(cfg.num_classes, dtype=torch.bool),
                         torch.empty(B, cfg.dim), torch.zeros(B, dtype=torch.int64), 0.9)
        assert len(got) == launches == 1 + ct.center_ema_cost(cfg, B)[1]
    assert ct.center_ema_cost(cfg, 4096)[0] == ct.center_ema_cost(cfg, R)[0] + 2 * lat


def test_views_are_priced_at_their_own_host_cost():
    """A view (``t``, ``view``, ``detach``...) launches nothing; the host prices it at ``view_op_s``
    (assumed equal to ``aten_op_s`` until the GPU run's ``view_op_cost`` measures it), in the eager
    baseline and in the fused step alike."""
    from dataclasses import replace
    cfg, B = _cfg(), 9
    rec = ct.step_ops(cfg, B, 1, "bfloat16")
    n_ops, _, _, n_views, _ = ct.fused_step_ops(cfg, 1, "phases-save")
    assert 0 < n_views < n_ops
    cheap = replace(ct.H200, view_op_s=1e-6)
    for impl, views in (("unroll-phases-save", n_views), ("eager", sum(o.view for o in rec.ops))):
        full = ct.predict(cfg, B, 1, impl, record=rec).terms["host"]
        assert full - ct.predict(cfg, B, 1, impl, ceilings=cheap, record=rec).terms["host"] == pytest.approx(views * 4e-6)


def test_phase_launchers_dispatch_no_reshaping_view_for_a_kernel_argument(monkeypatch):
    """A kernel reads a pointer, not a shape: the phase ops' launchers hand their kernels 1-D slices
    of the flat buffers they allocate, so the only reshaping views they dispatch (each a host
    dispatch the issued step pays) are the ``[1, B, d]`` state plane the denoiser's calls read their
    sizes from, and in the unroll's backward those its copy and its ``out=`` reductions need."""
    recorded = []
    record = ct.record_aten_ops
    monkeypatch.setattr(ct, "record_aten_ops", lambda *a, **k: recorded.append(record(*a, **k)) or recorded[-1])
    ct.fused_step_counts(_cfg(), 2, "phases-save")
    inside = {}
    for o in recorded[-1]:
        if o.inside and o.name in ("view", "unsqueeze", "reshape", "_reshape_alias"):
            inside[o.inside] = inside.get(o.inside, 0) + 1
    # unroll backward: grad_m flattened for its copy; the time rows' two per-step sums, their out=; the
    # hidden biases' sum and out=; b_out/b_pd's sum and out=; b_p/b_g's sum (one row split at this size)
    assert inside == {"denoise_phases_fwd": 1, "denoise_phases_bwd": 1, "unroll_phases_bwd": 9}
