"""tests/interpreter_speedups.py: installed in the test process and in the processes the tests
start, and a launch after a jit function called from plain Python still runs patched."""
import os
import subprocess
import sys

import pytest
import torch
import triton
import triton.language as tl

from seda_fast.ops.runtime import interpreter_enabled

pytestmark = pytest.mark.skipif(not interpreter_enabled() or os.environ.get("SEDA_FAST_PLAIN_INTERPRETER") == "1",
                                reason="the speed-ups are installed under the Triton interpreter only")

FLAGS = ("from triton.runtime import interpreter as i; "
         "print(i._patch_lang.__name__, i.interpreter_builder.options.sanitize_overflow)")


@triton.jit
def _ramp_kernel(out_ptr, start):
    offs = tl.arange(0, 4)
    tl.store(out_ptr + offs, start + tl.cdiv(offs * 2, 2))


def test_installed_here_and_in_started_processes():
    from triton.runtime import interpreter
    assert (interpreter._patch_lang.__name__, interpreter.interpreter_builder.options.sanitize_overflow) == \
        ("patch_once", False)
    proc = subprocess.run([sys.executable, "-c", FLAGS], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["patch_once", "False"], proc.stderr[-2000:]


def test_a_launch_after_a_jit_call_from_python_is_patched():
    """A jit function called from plain Python (no launch running) goes through Triton's own
    patching and leaves no launch state behind: the launches after it run patched."""
    assert tl.cdiv(5, 2) == 3
    for start in (0, 7):
        out = torch.zeros(4, dtype=torch.int32)
        _ramp_kernel[(1,)](out, start)
        assert out.tolist() == [start + i for i in range(4)]
