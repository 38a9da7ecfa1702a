"""sm_90a compile report (no GPU needed): every shipped block config of the fused kernels must
compile for sm_90a (the H200) without register spills and within its shared memory.

Compiling is ~1-2 s per kernel on the CI CPU, so every shipped config (compile_report.SHIPPED)
is compiled once per session, in a subprocess (the interpreter, on in these tests, cannot
compile); ``python -m seda_fast.tools.compile_report`` prints the same table.
"""
import shutil

import pytest

from seda_fast.tools import compile_report as cr


@pytest.fixture(scope="module")
def rows():
    return cr.collect(cr.SHIPPED)


INFERENCE_KERNELS = ("semantic_sampler_kernel", "translator_pfin_kernel")
# one stage-1 fused training step and stage-2 steps with each unroll (the phase unroll's stage-2 loss
# reads s from the phase schedule's prefix, the row-block one's from the Learner's sampler)
TRAINING_KERNELS = ("denoiser_x0_loss_fwd_kernel", "denoiser_x0_loss_bwd_kernel", "denoiser_wgrad_kernel",
                    "center_loss_train_kernel", "semantic_sampler_kernel", "translator_unroll_fwd_kernel",
                    "translator_unroll_bwd_step_kernel", "infer_phase_kernel", "unroll_phase_kernel")


KERNELS = {"inference": INFERENCE_KERNELS, "training": TRAINING_KERNELS, "inference-phases": ("infer_phase_kernel",)}


def _expected(step: str, batch: int, cfg) -> tuple:
    """The kernels a shipped config launches: training's center EMA is one launch up to ``R`` rows,
    the splits' sums and their EMA past it."""
    if step != "training":
        return KERNELS[step]
    from seda_fast.ops.runtime import kernels
    R = kernels().center_update.update_blocks(cfg.num_classes, cfg.dim)["R"]
    return KERNELS[step] + (("center_ema_kernel",) if batch <= R else ("class_sums_kernel", "ema_update_kernel"))


def test_every_shipped_kernel_compiled(rows):
    from seda_fast import presets
    seen = {(r["config"], r["dtype"], r["batch"], r["step"], r["kernel"]) for r in rows}
    for name, _, dtype, batch, step in cr.SHIPPED:
        for kernel in _expected(step, batch, presets.config(name)):
            assert (name, dtype, batch, step, kernel) in seen, (name, dtype, batch, step, kernel)
    phase_kinds = {(r["dtype"], r["batch"], r.get("KIND")) for r in rows if r["step"] == "inference-phases"}
    assert len(phase_kinds) == 3 * 7  # every phase kind of the schedule, per shipped phase config


def test_no_spills_and_shared_memory_fits(rows):
    assert cr.problems(rows) == [], "\n" + cr.format_table(rows)
    for r in rows:
        assert 0 < r["registers"] <= 255
        assert r["spill_stores"] == r["spill_loads"] == r["local_bytes"] == 0


def test_tensor_core_paths(rows):
    """bf16 throughput tiles (BM >= 64) use Hopper's wgmma; the latency tiles (BM = 16) mma.sync; the
    weight-gradient tiles (M = BN = 64 or 128, whatever the phase's BM) wgmma."""
    for r in rows:
        wgrad = r["kernel"] == "denoiser_wgrad_kernel" or (r["kernel"] == "unroll_phase_kernel" and r.get("KIND") == 7)
        if r["dtype"] == "bfloat16" and wgrad:
            assert r["wgmma"], r
        elif r["dtype"] == "bfloat16" and (r["BM"] or 0) >= 64:
            assert r["wgmma"], r
        elif r["dtype"] == "bfloat16" and r["BM"] == 16:
            assert r["mma_sync"], r
    print("\n" + cr.format_table(rows))


def test_table_and_cuobjdump_present(rows):
    assert cr._tools().exists() or shutil.which("cuobjdump")
    text = cr.format_table(rows)
    assert "translator_pfin_kernel" in text and "wgmma" in text
