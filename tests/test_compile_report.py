"""sm_90a compile report (no GPU needed): every shipped block config of the fused kernels must
compile for the H100 without register spills and within its shared memory.

Compiling is ~1-2 s per kernel on the CI CPU, so every shipped config (compile_report.SHIPPED)
is compiled once per session, in a subprocess (the interpreter, on in these tests, cannot
compile); ``python -m seda_fast.compile_report`` prints the same table.
"""
import shutil

import pytest

from seda_fast import compile_report as cr


@pytest.fixture(scope="module")
def rows():
    return cr.collect(cr.SHIPPED)


def test_every_shipped_kernel_compiled(rows):
    seen = {(r["config"], r["dtype"], r["batch"], r["kernel"]) for r in rows}
    for name, _, dtype, batch in cr.SHIPPED:
        for kernel in ("semantic_sampler_kernel", "translator_pfin_kernel"):
            assert (name, dtype, batch, kernel) in seen


def test_no_spills_and_shared_memory_fits(rows):
    assert cr.problems(rows) == [], "\n" + cr.format_table(rows)
    for r in rows:
        assert 0 < r["registers"] <= 255
        assert r["spill_stores"] == r["spill_loads"] == r["local_bytes"] == 0


def test_tensor_core_paths(rows):
    """bf16 throughput tiles (BM = 64) use Hopper's wgmma; the latency tiles (BM = 16) mma.sync."""
    for r in rows:
        if r["dtype"] == "bfloat16" and r["BM"] >= 64:
            assert r["wgmma"], r
        if r["dtype"] == "bfloat16" and r["BM"] == 16:
            assert r["mma_sync"], r
    print("\n" + cr.format_table(rows))


def test_table_and_cuobjdump_present(rows):
    assert cr._tools().exists() or shutil.which("cuobjdump")
    text = cr.format_table(rows)
    assert "translator_pfin_kernel" in text and "wgmma" in text
