"""README's training-loop example and its command lines run as written (docs that match the code),
and every relative link in README.md and docs/*.md resolves inside the repository."""
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def _block(title: str) -> str:
    text = README.read_text()
    section = text[text.index(title):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_training_loop_example_runs():
    code = _block("## Use it in a training loop")
    g = torch.Generator().manual_seed(0)
    loader = [(torch.randn(4, 1280, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(2)]
    scope = {"loader": loader, "class_text": torch.randn(10, 384, generator=g)}
    exec(compile(code, str(README), "exec"), scope)
    logits = scope["logits"]
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    assert scope["model"].stage == 2


# --------------------------------------------------------------------------- command lines

# The one command README gives for the GPU machine, whose own Python has torch (no .venv there).
GPU_MACHINE = ('pip install --no-deps --no-build-isolation -e . && PYTHONUNBUFFERED=1 python benchmarks/gpu_check.py '
               '--budget-s 420 "$OUT"')
# Cheap enough to run verbatim here (seconds); README's other commands take minutes (training,
# feature extraction, the benchmark sweep, the interpreter), so their cheap form runs instead:
# `make -n` (the target exists and what it runs) or the same command line with `--help` appended.
VERBATIM = {
    ".venv/bin/python -m seda_fast env",
    ".venv/bin/python -m seda_fast cost-model",
    ".venv/bin/python -m seda_fast bench report benchmarks/results/bench_cpu.json",
}
_COMMAND_START = re.compile(r"^(make|\.venv/bin/python|TRITON_INTERPRET=1|mkdir|python|pytest|pip) ")


def readme_commands() -> list[str]:
    """Every command line README gives: the lines of its ```bash blocks (comments dropped) and the
    inline code spans that start like a command."""
    text = README.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    commands += [span.strip() for span in re.findall(r"`([^`\n]+)`", prose) if _COMMAND_START.match(span.strip())]
    return list(dict.fromkeys(commands))


def test_readme_commands_need_no_activated_virtualenv():
    """Run as written from a fresh shell, a bare `python`/`pytest` is not the project's virtualenv."""
    commands = readme_commands()
    assert any(c.startswith("make demo") for c in commands) and VERBATIM <= set(commands)
    for cmd in commands:
        if cmd == GPU_MACHINE:
            continue
        words = re.split(r"\s*&&\s*", cmd)
        for word in words:
            assert re.match(r"^(make |mkdir |(TRITON_INTERPRET=1 )?\.venv/bin/python )", word), cmd


def _sandbox(tmp_path: Path) -> Path:
    """A fresh checkout's view of the repository (its top-level entries linked), so outputs land in
    a temporary folder."""
    box = tmp_path / "checkout"
    box.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in ("seda_fast_out", ".git"):
            (box / entry.name).symlink_to(entry)
    return box


def _fresh_shell_env() -> dict:
    """No activated virtualenv: the venv's bin/ off PATH, no VIRTUAL_ENV, PYTHONPATH or
    TRITON_INTERPRET inherited from the test process."""
    venv_bin = str(ROOT / ".venv" / "bin")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "TRITON_INTERPRET")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return env


def _tracked_results() -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (ROOT / "benchmarks" / "results").iterdir()}


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(), reason="needs the .venv of `make setup`")
@pytest.mark.parametrize("cmd", readme_commands())
def test_readme_command_runs_from_a_fresh_shell(cmd, tmp_path):
    if cmd == GPU_MACHINE:
        pytest.skip("runs on the GPU machine's own Python (pip install -e . there); "
                    "benchmarks/gpu_check.py --dry-run is its CPU rehearsal")
    if shutil.which("make") is None and cmd.startswith("make "):
        pytest.skip("no make on this machine")
    if cmd in VERBATIM:
        form = cmd
    elif cmd.startswith("make "):
        form = "make -n " + cmd[len("make "):]
    else:
        form = cmd + " --help"
    box = _sandbox(tmp_path)
    before = _tracked_results()
    proc = subprocess.run(["bash", "-c", form], cwd=box, env=_fresh_shell_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"{form}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert _tracked_results() == before, "a documented command rewrote a committed reference result"
    if form.startswith("make -n"):
        assert ".venv" in proc.stdout  # the project's venv (.venv, or .venv-compat for `make compat`)
    elif form.endswith("--help"):
        assert "usage" in proc.stdout.lower()
    if "bench report" in form and form in VERBATIM:
        assert {p.name for p in (box / "seda_fast_out").iterdir()} == {"bench_cpu.md", "speedup.png", "roofline.png"}


# --------------------------------------------------------------------------- links


def _docs() -> list[Path]:
    return [README] + sorted((ROOT / "docs").glob("*.md"))


def test_docs_math_exists_and_readme_links_it():
    assert (ROOT / "docs" / "math.md").is_file()
    assert "](docs/math.md)" in README.read_text()


@pytest.mark.parametrize("doc", _docs(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve_inside_the_repository(doc):
    links = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", doc.read_text())
    assert links or doc != README
    for target in links:
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), f"{doc.name}: {target} points outside the repository"
        assert path.exists(), f"{doc.name}: {target} does not exist"


def test_no_tracked_file_cites_files_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    for name in tracked.stdout.split():
        path = ROOT / name
        if path.suffix in (".py", ".md", ".txt", ".ini", ".sh", "") and path.is_file() and name != "tests/apps/test_readme.py":
            assert "../shared/" not in path.read_text(errors="replace"), name
