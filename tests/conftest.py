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

# transformers imports the `kernels` distribution it depends on; from the checkout's root our
# `kernels/` (the Triton sources) would shadow it (seda_fast.apps.data.import_hub_kernels)
from seda_fast.apps.data import import_hub_kernels  # noqa: E402

import_hub_kernels()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
