"""sm_90a compile report (no GPU needed): every shipped block config of the fused kernels must
compile for sm_90a (the H200) without register spills and within its shared memory.

Compiling is ~1-2 s per kernel on the CI CPU, so every shipped config (compile_report.SHIPPED)
is compiled once per session, in a subprocess (the interpreter, on in these tests, cannot
compile); ``python -m seda_fast.tools.compile_report`` prints the same table. A kernel made to
spill checks that spills are still counted where the report reads them.
"""
import json
import shutil
import sys
from pathlib import Path

import pytest

from seda_fast.tools import compile_report as cr
from helpers import compile_rows_in_subprocess


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


def spilling_rows() -> list[dict]:
    """Compile rows of a kernel made to spill (two chained 128 x 128 fp32 dots in 4 warps: past
    the 255-register cap), and of the same kernel at 32 x 32, which fits."""
    import torch
    import triton
    import triton.language as tl

    from seda_fast.ops.runtime import kernels

    @triton.jit
    def chained_dots(x, y, N: tl.constexpr):
        o = tl.arange(0, N)
        a = tl.load(x + o[:, None] * N + o[None, :])
        b = tl.dot(a, a)
        tl.store(y + o[:, None] * N + o[None, :], tl.dot(b, a) + b)

    rows = []
    for n in (128, 32):
        x = torch.empty(n, n)
        launch = kernels()._launch.Launch(chained_dots, (1,), (x, x), dict(N=n, num_warps=4))
        rows.append(cr.compile_launch(launch, "float32"))
    return rows


def test_spills_are_counted(tmp_path):
    """The report reads spills from the SASS where the kernel has a local frame, and skips the
    disassembly where it has none (nothing could spill there): a kernel past the register cap
    counts its STL/LDL, the same kernel at a size that fits counts none."""
    spilled, fits = compile_rows_in_subprocess(__file__, tmp_path / "rows.json")
    assert spilled["stack_bytes"] > 0
    assert spilled["spill_stores"] > 0 and spilled["spill_loads"] > 0
    assert fits["stack_bytes"] == fits["local_bytes"] == fits["spill_stores"] == fits["spill_loads"] == 0


if __name__ == "__main__":  # the spill check's subprocess: python tests/tools/test_compile_report.py OUT.json
    Path(sys.argv[1]).write_text(json.dumps(spilling_rows(), indent=1))
