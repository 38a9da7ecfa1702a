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


def _patch_language_once_per_launch() -> None:
    """Speed the interpreter up (the unroll's fp32 parity tests: 34 s instead of 40 s) without
    changing what it computes (a fused training run is bitwise the same).

    Triton's interpreter patches ``triton.language`` for the interpreter when a kernel launch starts
    (and restores it when the launch ends), and patches it again on every call of a ``@triton.jit``
    helper inside the kernel. Those inner patches find the builtins already patched and set the
    rest to equivalent closures, a scan of the language modules each time: a fused training step
    calls thousands of helpers. Here an inner call whose language modules the running launch has
    already patched skips the patching; anything else (the launch itself, a helper that sees
    another language module) goes through Triton's own. Installed only where the interpreter has this structure;
    ``SEDA_FAST_PLAIN_INTERPRETER=1`` leaves the interpreter as Triton ships it."""
    import inspect

    import triton.language as tl
    from triton.runtime import interpreter

    patch, scope_type = getattr(interpreter, "_patch_lang", None), getattr(interpreter, "_LangPatchScope", None)
    if patch is None or scope_type is None:
        return
    running = {"langs": None}  # the language modules the running launch patched
    langs_of = {}

    class Nothing:
        def restore(self) -> None:
            pass

    def patch_once(fn):
        langs = langs_of.get(fn)
        if langs is None:
            langs = langs_of[fn] = frozenset(v for v in fn.__globals__.values()
                                             if inspect.ismodule(v) and v in (tl, tl.core))
        outer = running["langs"]
        if outer is not None:
            return Nothing() if langs <= outer else patch(fn)
        scope = patch(fn)
        restore = scope.restore

        def restore_and_end() -> None:
            restore()
            running["langs"] = None
        scope.restore = restore_and_end
        running["langs"] = langs
        return scope
    interpreter._patch_lang = patch_once


if os.environ.get("TRITON_INTERPRET") == "1" and os.environ.get("SEDA_FAST_PLAIN_INTERPRETER") != "1":
    _patch_language_once_per_launch()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
