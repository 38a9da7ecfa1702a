"""Two speed-ups of Triton's CPU interpreter that leave what it computes unchanged, installed by
tests/conftest.py for the test process and, through ``sitecustomize.py`` in tests/interpreter_site/
(on the PYTHONPATH conftest gives the processes the tests start), for those processes too.
``SEDA_FAST_PLAIN_INTERPRETER=1`` leaves the interpreter as Triton ships it."""
import dataclasses
import os

_installed = False


def _patch_language_once_per_launch() -> None:
    """Speed the interpreter up without changing what it computes (a fused training run is bitwise
    the same).

    Triton's interpreter patches ``triton.language`` for the interpreter when a kernel launch starts
    (and restores it when the launch ends), and patches it again on every call of a ``@triton.jit``
    helper inside the kernel, Triton's own (``tl.cdiv``, ``tl.zeros``, ``tl.sum``) included. Those
    inner patches find the builtins already patched and set the rest to equivalent closures, a scan
    of the language modules each time: a fused training step calls thousands of helpers. Here an
    inner call whose language modules the running launch has already patched skips the patching;
    the launch itself, and the first helper that sees another language module (Triton's own see
    ``triton.language.core`` too), go through Triton's own, which leaves that module patched (it
    drops an inner call's scope) for the rest of the launch. Which launch is running is tracked
    around Triton's ``GridExecutor.__call__`` (a nested launch starts afresh, and the outer one's
    state comes back after it); a jit function called from plain Python, outside any launch, goes
    through Triton's own patching. Installed only where the interpreter has this structure;
    ``SEDA_FAST_PLAIN_INTERPRETER=1`` leaves the interpreter as Triton ships it."""
    import inspect

    import triton.language as tl
    from triton.runtime import interpreter

    patch, scope_type = getattr(interpreter, "_patch_lang", None), getattr(interpreter, "_LangPatchScope", None)
    executor = getattr(interpreter, "GridExecutor", None)
    if patch is None or scope_type is None or executor is None:
        return
    # the language modules patched since the running launch started (None: no launch is running; a
    # jit function called from plain Python then goes through Triton's own patching)
    running = {"langs": None}
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
        if outer is None:
            return patch(fn)
        if langs <= outer:
            return Nothing()
        running["langs"] = outer | langs
        return patch(fn)

    launch = executor.__call__

    def tracked_launch(self, *args, **kwargs):  # a launch (a nested one too) starts with nothing patched
        saved, running["langs"] = running["langs"], frozenset()
        try:
            return launch(self, *args, **kwargs)
        finally:
            running["langs"] = saved
    executor.__call__ = tracked_launch
    interpreter._patch_lang = patch_once


def interpreter_builder():
    """Triton's interpreter builder, if this Triton has one with options (None otherwise)."""
    from triton.runtime import interpreter
    builder = getattr(interpreter, "interpreter_builder", None)
    return builder if hasattr(getattr(builder, "options", None), "sanitize_overflow") else None


def set_interpreter_options(**options) -> dict:
    """Set fields of the interpreter's options (``sanitize_overflow``, ``debug``); returns their old values."""
    builder = interpreter_builder()
    was = {name: getattr(builder.options, name) for name in options}
    builder.options = dataclasses.replace(builder.options, **options)
    return was


def install() -> None:
    """Both speed-ups, where ``TRITON_INTERPRET=1`` and ``SEDA_FAST_PLAIN_INTERPRETER`` is not 1.

    The interpreter redoes every int32 add, subtract and multiply in int64 to check it for overflow,
    about a third of an interpreted fused step, and then, outside debug mode, drops the check's
    assert: nothing is checked. Here that work is skipped; the tests that take conftest's
    ``overflow_checks`` fixture run in debug mode with the checks on, where they do check."""
    global _installed
    if _installed or os.environ.get("TRITON_INTERPRET") != "1" or \
            os.environ.get("SEDA_FAST_PLAIN_INTERPRETER") == "1":
        return
    _installed = True
    _patch_language_once_per_launch()
    if interpreter_builder() is not None:
        set_interpreter_options(sanitize_overflow=False)
