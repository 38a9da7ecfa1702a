"""Test set-up. Triton's interpreter mode is fixed when a kernel is decorated, so
TRITON_INTERPRET must be set before seda_fast (and its kernels) is imported: CPU tests
run every Triton kernel in the interpreter."""
import os
import sys
from pathlib import Path

import pytest
import torch

# The test folders mirror the package (core, ops, tools, apps); their shared helpers live here.
sys.path.insert(0, str(Path(__file__).resolve().parent))

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.use_deterministic_algorithms(True, warn_only=True)

# pytest-xdist's workers share the cores: one torch thread each. Two threads per worker spin against
# the other worker (the in-process emoji demo test: 131 s beside the sm_90a compile checks in CI,
# 22 s beside an interpreted training run, 9 s there with one thread).
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    torch.set_num_threads(1)

# transformers imports the `kernels` distribution it depends on; from the checkout's root our
# `kernels/` (the Triton sources) would shadow it (seda_fast.apps.data.import_hub_kernels)
from seda_fast.apps.data import import_hub_kernels  # noqa: E402

import_hub_kernels()

import interpreter_speedups  # noqa: E402


interpreter_speedups.install()
# the Python processes the tests start (the GPU script's dry run, DDP ranks, CLI runs) install them too
os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent / "interpreter_site")]
                                           + [p for p in [os.environ.get("PYTHONPATH")] if p])


@pytest.fixture
def overflow_checks():
    """The Triton interpreter in debug mode with its int32 overflow checks on, for this test (device
    asserts then raise; the suite runs without either)."""
    if interpreter_speedups.interpreter_builder() is None:
        pytest.skip("this Triton's interpreter has no overflow checks to turn on")
    was = interpreter_speedups.set_interpreter_options(sanitize_overflow=True, debug=True)
    yield
    interpreter_speedups.set_interpreter_options(**was)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
