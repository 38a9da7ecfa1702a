"""Cost model of the phase-schedule inference (seda_fast/tools/cost_phases.py): its counts come from the
launcher's own schedule and tiles, and its predictions are finite and ordered as the sync costs say."""
import dataclasses

import pytest
import torch

from helpers import infer_phases_placeholders

from seda_fast import presets
from seda_fast.ops.runtime import kernels
from seda_fast.tools import cost_model, cost_phases

K = kernels()
IP = K.infer_phases_module


def test_phase_count_and_flops_match_the_schedule():
    cfg = presets.config("default")
    assert len(cost_phases.phase_costs(cfg, 1024)) == IP.phase_count(cfg.layers, 10, 10) == 66
    assert len(cost_phases.phase_costs(cfg, 64)) == IP.phase_count(cfg.layers, 10, 10, fold=True) == 45
    for cfg in (presets.config("default"), presets.config("small"), presets.config("small", layers=1)):
        d, H, K1, K2 = cfg.dim, cfg.hidden, cfg.learner_steps, cfg.translator_steps
        flops = {fold: sum(2.0 * 33 * N * Kd for p in IP.build_schedule(d, H, cfg.num_classes, cfg.visual_dim,
                                                                         cfg.layers, K1, K2, fold) for _, N, Kd in p.jobs)
                 for fold in (False, True)}
        # the schedule's jobs cover every matmul of the chain exactly once
        assert flops[False] == cost_model.inference_flops(cfg, 33)
        # folded: each folded A reduces over H instead of d, PFIN's P and G read h (H) instead of
        # x0_hat (d), and the Translator's O GEMMs are gone (the Learner's ride along instead)
        extra = (K1 + K2 - 2) * H * (H - d) + K2 * (H + d) * (H - d) - K2 * d * H
        assert flops[True] - flops[False] == 2.0 * 33 * extra


@pytest.mark.parametrize("batch,dtype,preset", [(1, "float32", "small"), (33, "float32", "small"),
                                                (33, "bfloat16", "small"), (300, "bfloat16", "small"),
                                                (1024, "bfloat16", "default"), (4096, "bfloat16", "default")])
def test_tiles_are_the_launchers_grids(batch, dtype, preset):
    """The model's tile count per phase is the grid the launcher launches (captured, not run), the
    per-phase tiles of throughput batches included."""
    cfg = presets.config(preset)
    v, weights, tables = infer_phases_placeholders(cfg, batch, getattr(torch, dtype))
    with K.capture_launches() as launches:
        K.infer_phases(v, weights, tables, ln_eps=1e-5, start_c0=0.1, start_c1=0.9)
    costs = cost_phases.phase_costs(cfg, batch, dtype)
    assert [ln.grid[0] for ln in launches] == [c.tiles for c in costs]


def test_predictions():
    cfg = presets.config("default")
    table = cost_phases.prediction_table(cfg)
    assert table.count("| persistent |") == len(cost_phases.BATCHES)
    for b in cost_phases.BATCHES:
        p = {impl: cost_phases.predict(cfg, b, impl) for impl in cost_phases.IMPLS}
        for pred in p.values():
            assert 0 < pred.time_s < 1 and pred.counts["phases"] == IP.phase_count(cfg.layers, 10, 10, IP.use_fold(b))
        # a Python launch per phase costs more than a graph boundary or a barrier per phase
        assert p["persistent"].terms["sync"] <= p["phases"].terms["sync"] < p["phases-raw"].terms["sync"]
        assert p["phases"].time_s < p["phases-raw"].time_s
        tiles = {impl: IP.pick_infer_tiles(b, cfg.dim, cfg.hidden, torch.bfloat16, impl)
                 for impl in ("phases", "persistent")}
        assert p["phases-split"].time_s >= p["phases"].time_s  # equal above B = 256, where nothing splits
        if (tiles["phases"].BM, tiles["phases"].BN) == (tiles["persistent"].BM, tiles["persistent"].BN):
            assert p["persistent"].time_s <= p["phases"].time_s  # same tiles: only the sync differs
        else:  # B = 16384: the persistent kernel's own 64x64 tiles (no spills under triton 3.6.0) read more
            assert p["persistent"].counts["l2_bytes"] > p["phases"].counts["l2_bytes"]
    small, big = cost_phases.predict(cfg, 64), cost_phases.predict(cfg, 16384)
    assert big.time_s > small.time_s
    assert big.time_s >= cost_model.inference_cost(cfg, 16384).floor_s  # never below the floor
    with pytest.raises(ValueError, match="impl"):
        cost_phases.predict(cfg, 1, "rowblock")


@pytest.mark.parametrize("batch", [1, 17, 33, 49, 64, 65, 100, 128, 129, 160, 161, 200, 225, 256])
def test_latency_tiles_are_the_models_fastest(batch):
    """``pick_infer_tiles`` at B <= 256 (bf16, default model) is the fastest unsplit tile of BM
    16/32/64 x BN 16/32/64/128 under the model (the phases' time summed over the call), and split-K
    is slower still (its fixup's L2 round trips)."""
    cfg = presets.config("default")
    total = lambda tiles: sum(c.time_s for c in cost_phases.phase_costs(cfg, batch, tiles=tiles))  # noqa: E731
    pick = IP.pick_infer_tiles(batch, cfg.dim, cfg.hidden)
    assert pick.split_k == 1
    best = min(total(IP.PhaseTiles(bm, bn, 64, 4, 2)) for bm in (16, 32, 64) for bn in (16, 32, 64, 128))
    assert total(pick) == best
    assert total(IP.pick_infer_tiles(batch, cfg.dim, cfg.hidden, split_k=True)) > best


@pytest.mark.parametrize("batch", [257, 512, 768, 1024, 1536, 2048, 4096, 8192, 16384])
def test_per_phase_tiles_beat_one_tile_per_call(batch):
    """The launcher's per-phase tiles (``pick_phase_plan``) against each throughput tile for the whole
    call, under the model (default model, bf16, the phases' time summed): never slower than the
    call's one tile, and within 3 % of the best of the four, phase by phase (its yardstick, waves x
    operand bytes per tile, is the L2 term only); B = 1024 and 4096 gain over 8 %."""
    cfg = presets.config("default")
    total = lambda tiles=None: sum(c.time_s for c in cost_phases.phase_costs(cfg, batch, tiles=tiles))  # noqa: E731
    plan, one = total(), total(IP.pick_infer_tiles(batch, cfg.dim, cfg.hidden))
    per_tile = [cost_phases.phase_costs(cfg, batch, tiles=t) for t in IP.throughput_candidates(cfg.dim, cfg.hidden)]
    best = sum(min(costs[i].time_s for costs in per_tile) for i in range(len(per_tile[0])))
    assert best <= plan <= one and plan <= 1.03 * best
    if batch in (1024, 4096):
        assert plan < 0.92 * one


def test_split_k_counts():
    """A split job: S work items per output tile, the same operand bytes as unsplit (the slices
    partition K) and the same FLOPs, plus S fp32 partials stored and read back per output tile."""
    base = IP.PhaseTiles(64, 32, 64, 4, 2)
    split = dataclasses.replace(base, split_k=4)
    t1, f1, b1 = cost_phases.job_counts(64, 1024, 512, base, 2, epilogue_reads=1)
    t4, f4, b4 = cost_phases.job_counts(64, 1024, 512, split, 2, epilogue_reads=1)
    assert (t1, t4) == (32, 128) and f1 == f4 == 2.0 * 64 * 1024 * 512
    assert b1 == 32 * ((32 * 512 + 64 * 512 + 2 * 64 * 32) * 2)
    assert b4 - b1 == 32 * 2 * 4 * 64 * 32 * 4
    # the default model at B = 64: split-K moves fewer bytes than 16-row blocks (each re-reads every
    # weight), and each split phase pays its fixup on top (two L2 round trips, one program's reload)
    cfg = presets.config("default")
    split = IP.pick_infer_tiles(64, cfg.dim, cfg.hidden, split_k=True)
    assert split.split_k == 4
    l2 = lambda tiles: sum(cost_phases.job_counts(64, N, Kd, tiles, 2)[2]  # noqa: E731
                           for p in IP.build_schedule(cfg.dim, cfg.hidden, cfg.num_classes, cfg.visual_dim,
                                                      cfg.layers, 10, 10) for _, N, Kd in p.jobs)
    assert l2(split) < 0.75 * l2(IP.pick_phase_tiles(64, cfg.dim, cfg.hidden))
    c = cost_model.H200
    assert cost_phases.split_fixup_s(split) == 2 * c.l2_latency_s + 4 * 64 * 32 * 4 / c.l2_per_sm_bytes_per_s
    assert cost_phases.split_fixup_s(base) == 0.0


def test_graph_replay_pays_the_pdl_boundary():
    """``"phases"`` on the H200 is a graph of programmatic dependent launches: its sync term moves
    with ``pdl_boundary_s`` (a GPU run's measurement) and nothing else does."""
    cfg = presets.config("default")
    faster = dataclasses.replace(cost_model.H200, pdl_boundary_s=0.5e-6)
    base, fast = cost_phases.predict(cfg, 64), cost_phases.predict(cfg, 64, ceilings=faster)
    assert base.terms["sync"] - fast.terms["sync"] == pytest.approx(base.counts["phases"] * 0.8e-6)
    for impl in ("phases-raw", "persistent"):
        assert cost_phases.predict(cfg, 64, impl).time_s == cost_phases.predict(cfg, 64, impl, ceilings=faster).time_s
