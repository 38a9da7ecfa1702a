"""The cost model's counts: the row-block prediction's L2 bytes against the kernels' tile loops
enumerated one load at a time, and its ceilings replaced by a GPU run's measurements."""
import math
from pathlib import Path

import pytest
import torch

from helpers import case_ids

from seda_fast.tools import cost_model as cm
from seda_fast import presets
from seda_fast.kernels import pick_blocks


def _matmul_tile_loads(rows, N, K, BM, BN, BK):
    """Elements ``blk.matmul_tile`` loads for one ``[rows, N]`` output of ``X [rows, K] W [N, K]^T``:
    for every BN-column tile and every BK chunk, the unmasked part of the X and W tiles."""
    x = w = 0
    for n0 in range(0, N, BN):
        for k0 in range(0, K, BK):
            kk = min(BK, K - k0)
            x += min(rows, BM) * kk
            w += min(BN, N - n0) * kk
    return x, w


CASES = [(3, "float32"), (40, "bfloat16"), (300, "float16")]


@pytest.mark.parametrize("batch,dtype", CASES, ids=case_ids("batch,dtype", CASES))
def test_rowblock_l2_bytes_equal_the_tile_loops(batch, dtype):
    cfg = presets.config("small")
    e = {"float32": 4, "float16": 2, "bfloat16": 2}[dtype]
    blocks = pick_blocks(batch, cfg.dim, cfg.hidden, cfg.visual_dim, getattr(torch, dtype))
    expect = 0
    for name, N, K, count in cm.inference_matmuls(cfg):
        x, w = _matmul_tile_loads(batch, N, K, blocks.BM, blocks.BN, blocks.BK)
        expect += count * (x * (e if name == "projector W_v" else 4) + w * e)
    pred = cm.rowblock_inference(cfg, batch, dtype)
    assert pred.counts["l2_bytes_per_program"] == expect
    assert pred.counts["programs"] == math.ceil(batch / blocks.BM)
    assert pred.time_s == pred.terms[pred.bound] + pred.terms["launch"] > 0


def test_default_model_is_l2_bound_as_counted():
    """The default model in bf16: every program streams every weight of every step (~127 MiB at
    B = 1); at B = 16384 the fp32 activation re-reads make it ~165 GB of L2 traffic."""
    cfg = presets.config("default")
    small, large = cm.rowblock_inference(cfg, 1), cm.rowblock_inference(cfg, 16384)
    weights = sum(N * K * count for _, N, K, count in cm.inference_matmuls(cfg)) * 2
    assert weights < small.counts["l2_bytes_per_program"] < 1.05 * weights
    assert small.bound == large.bound == "L2"
    assert 150e9 < large.counts["l2_bytes_total"] < 180e9
    assert "| 16384 |" in cm.prediction_table(cfg)


def test_ceilings_from_a_gpu_run():
    rows = [{"section": "micro", "name": "copy_bandwidth", "status": "ok", "value": 4.1},
            {"section": "micro", "name": "barrier_round_trip", "status": "ok", "value": 2.5},
            {"section": "micro", "name": "pdl_graph_boundary", "status": "ok", "value": 0.6},
            {"section": "micro", "name": "launch_cost", "status": "ok", "value": 9.0},
            {"section": "micro", "name": "launch_cost_wide", "status": "ok", "value": 14.0},
            {"section": "micro", "name": "aten_op_cost", "status": "ok", "value": 4.5},
            {"section": "micro", "name": "view_op_cost", "status": "ok", "value": 1.0},
            {"section": "micro", "name": "label_check_cost", "status": "ok", "value": 31.0},
            {"section": "micro", "name": "l2_bandwidth", "status": "error"},
            {"section": "micro", "name": "gemm_bf16", "status": "ok", "value": 0.003, "dry_run": True},
            {"section": "env", "name": "device", "status": "ok", "sms": 132}]
    got = cm.H200.from_gpu_check(rows, run="run X")
    assert got.copy_bytes_per_s == pytest.approx(4.1e12) and got.barrier_s == pytest.approx(2.5e-6)
    assert got.pdl_boundary_s == pytest.approx(0.6e-6)
    # a phase kernel's launch is priced by the wide kernel's (its argument list), not the empty one's
    assert got.launch_s == pytest.approx(14e-6) and got.aten_op_s == pytest.approx(4.5e-6)
    assert got.view_op_s == pytest.approx(1e-6) and got.label_check_s == pytest.approx(31e-6)
    assert got.l2_bytes_per_s == cm.H200.l2_bytes_per_s and got.bf16_flops == cm.H200.bf16_flops  # error, dry run
    source = dict(got.source)
    assert source["copy_bytes_per_s"] == "measured: run X" and source["l2_bytes_per_s"] == "assumed"


def test_readme_inference_table_is_what_the_tool_prints():
    """README's table of predicted inference times is ``cost-model``'s own, line for line (docs that
    match the code)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text().splitlines()
    table = cm.comparison_table(cm.comparison(presets.config("default"))).splitlines()
    assert len(table) == 6  # header, rule, B = 1, 64, 1024, 16384
    for line in table:
        assert line in readme, line
