"""Test set-up. Triton's interpreter mode is fixed when a kernel is decorated, so
TRITON_INTERPRET must be set before seda_fast (and its kernels) is imported: CPU tests
run every Triton kernel in the interpreter."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.use_deterministic_algorithms(True, warn_only=True)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
