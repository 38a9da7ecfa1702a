"""Shared test helpers: small odd-sized configs and fresh random inputs."""
import torch

import seda_fast as sf


def small_config(**overrides) -> sf.SeDAConfig:
    """Odd sizes (none a multiple of 16) so masking paths are exercised."""
    base = dict(visual_dim=37, text_dim=21, num_classes=7, dim=48, hidden=80, layers=3,
                learner_steps=4, translator_steps=4)
    base.update(overrides)
    return sf.SeDAConfig(**base)


def make_model(seed: int = 0, dtype=torch.float32, **overrides) -> sf.SeDA:
    torch.manual_seed(seed)
    return sf.SeDA(small_config(**overrides)).to(dtype)


def make_batch(cfg: sf.SeDAConfig, batch: int, seed: int = 1, dtype=torch.float32):
    """``(visual [B, Dv], labels [B], class_text [C, Dt])``, fresh random values."""
    g = torch.Generator().manual_seed(seed)
    visual = torch.randn(batch, cfg.visual_dim, generator=g).to(dtype)
    labels = torch.randint(0, cfg.num_classes, (batch,), generator=g)
    text = torch.randn(cfg.num_classes, cfg.text_dim, generator=g).to(dtype)
    return visual, labels, text


def assert_flash_rule(name: str, out, ref_lowp, ref32, atol: float) -> None:
    """flash-attention's rule for fp16/bf16 kernels: max |kernel - fp32 ref| <= 2 x max |torch
    same-dtype - fp32 ref| + atol (CONVENTIONS.md)."""
    err_kernel = (out.float() - ref32.float()).abs().max().item()
    err_torch = (ref_lowp.float() - ref32.float()).abs().max().item()
    assert err_kernel <= 2 * err_torch + atol, f"{name}: kernel {err_kernel:.3e} vs torch {err_torch:.3e}"


def compile_rows_in_subprocess(test_file, out) -> list:
    """Run ``python TEST_FILE OUT`` without the Triton interpreter (which cannot compile) and return
    the compile-report rows it writes to ``out`` (each test file's ``__main__`` compiles its kernels
    for sm_90a with :func:`seda_fast.compile_report.compile_unique`)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, TRITON_INTERPRET="0",
               PYTHONPATH=os.pathsep.join([str(root), str(root / "tests"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(test_file), str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(Path(out).read_text())
