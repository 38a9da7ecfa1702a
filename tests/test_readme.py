"""README's training-loop example runs as written (docs that match the code)."""
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parent.parent / "README.md"


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
