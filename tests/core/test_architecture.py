"""The package's layers (README "Architecture") hold: every import in ``seda_fast/`` and ``kernels/``,
at module level or inside a function, points down or sideways, never up.

    kernels  <-  ops  <-  api (backends, model, step_graph)  <-  tools  <-  apps
         \\______ core (config, schedule, validation, reference, presets, ...) ______/

Core imports only core; kernels import only kernels and ``seda_fast.validation`` (the shared
argument checks); ops import core and kernels; tools import no apps.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = {"config", "schedule", "validation", "reference", "presets", "nvtx", "outputs", "progress"}
API = {"backends", "model", "step_graph", "__init__"}
PACKAGES = {"seda_fast", "seda_fast.kernels", "seda_fast.ops", "seda_fast.tools", "seda_fast.apps"}
ALLOWED = {
    "core": {"core"},
    "kernels": {"kernels", "validation"},
    "ops": {"core", "kernels", "ops"},
    "api": {"core", "kernels", "ops", "api"},
    "tools": {"core", "kernels", "ops", "api", "tools"},
    "apps": {"core", "kernels", "ops", "api", "tools", "apps"},
    "cli": set(),
}


def layer(module: str) -> str:
    """The layer of a dotted ``seda_fast`` module name."""
    parts = module.split(".")[1:]
    if not parts:
        return "api"  # the package itself: seda_fast/__init__.py
    head = parts[0]
    if head in ("kernels", "ops", "tools", "apps"):
        return head
    if head == "__main__":
        return "cli"
    if head in CORE:
        return "core"
    if head in API:
        return "api"
    raise AssertionError(f"seda_fast.{head} belongs to no layer: add it to README's Architecture and this test")


def modules():
    """``(dotted name, path)`` of every module of the package, kernels included."""
    for path in sorted((ROOT / "seda_fast").rglob("*.py")):
        rel = path.relative_to(ROOT / "seda_fast").with_suffix("")
        yield ".".join(("seda_fast",) + rel.parts), path
    for path in sorted((ROOT / "kernels").glob("*.py")):
        yield f"seda_fast.kernels.{path.stem}", path


def imported(name: str, path: Path):
    """The ``seda_fast`` modules ``path`` imports (relative imports resolved against ``name``)."""
    package = name.split(".")[:-1]  # a package's __init__ is named <package>.__init__
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            # `from <package> import x` imports the submodule x; `from <package>.m import f` imports m
            targets = [f"{mod}.{a.name}" for a in node.names] if mod in PACKAGES else [mod]
        else:
            continue
        for target in targets:
            if target == "seda_fast" or target.startswith("seda_fast."):
                # `from .. import validation as val` names a module; `from ..config import X` names config
                parts = target.split(".")
                yield ".".join(parts[:3]) if len(parts) > 2 and parts[1] in ("kernels", "ops", "tools", "apps") \
                    else ".".join(parts[:2])


def _layer_of_target(target: str) -> str:
    if target.startswith("seda_fast.") and target.split(".")[1] == "validation":
        return "validation"
    if target == "seda_fast.__version__":
        return "api"
    return layer(target)


@pytest.mark.parametrize("name,path", [pytest.param(n, p, id=n) for n, p in modules()])
def test_imports_point_down(name, path):
    own = layer(name)
    for target in imported(name, path):
        dest = _layer_of_target(target)
        ok = dest in ALLOWED[own] or (dest == "validation" and "core" in ALLOWED[own])
        assert ok, f"{name} ({own}) imports {target} ({dest}); {own} may import only {sorted(ALLOWED[own])}"


def test_every_op_module_has_its_kernel_module_of_the_same_name():
    """``seda_fast/ops/X.py`` <-> ``kernels/X.py``, both ways (private and shared modules aside)."""
    shared_ops = {"__init__", "runtime", "weights"}
    ops = {p.stem for p in (ROOT / "seda_fast" / "ops").glob("*.py")} - shared_ops
    kernels = {p.stem for p in (ROOT / "kernels").glob("*.py") if not p.stem.startswith("_")}
    assert ops == kernels


def test_the_layer_checker_sees_a_violation():
    """The checker itself: an upward import is reported (so a green run means something)."""
    targets = list(imported("seda_fast.ops.center_loss", _Source("from ..tools import bench\nfrom .. import config\n")))
    assert targets == ["seda_fast.tools.bench", "seda_fast.config"]
    assert _layer_of_target(targets[0]) not in ALLOWED["ops"]
    assert _layer_of_target(targets[1]) in ALLOWED["ops"]


class _Source:
    """A stand-in for a module file whose text is ``src``."""

    def __init__(self, src: str):
        self.src = src

    def read_text(self) -> str:
        return self.src
