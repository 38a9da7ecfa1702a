"""`python -m seda_fast`: every command is listed and answers --help; the module entry points stay."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seda_fast.__main__ import COMMANDS, main

EXPECTED = ("demo", "env", "bench", "memory", "compile-report", "cost-model", "cost-training", "study")


def test_usage_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert set(COMMANDS) == set(EXPECTED)
    for name in EXPECTED:
        assert f"\n  {name} " in out, name


@pytest.mark.parametrize("argv", [[name, "--help"] for name in EXPECTED] + [["bench", "report", "--help"]],
                         ids=lambda a: " ".join(a))
def test_each_command_answers_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    assert f"usage: python -m seda_fast {argv[0]}" in capsys.readouterr().out


def test_cost_model_prints_its_table(capsys):
    assert main(["cost-model"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("B=     1") and "GFLOP" in lines[0] and lines[3].startswith("B= 16384")
    assert any("rowblock ms" in line for line in lines[4:])  # the row-block prediction table follows


def test_module_entry_points_still_work():
    proc = subprocess.run([sys.executable, "-m", "seda_fast.tools.bench", "report", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "--update-reference" in proc.stdout, proc.stderr


def test_output_folder_options(tmp_path, monkeypatch):
    """--out DIR, the default ./seda_fast_out, and --update-reference (the committed results folder
    of a source checkout; a clear error elsewhere); --out and --update-reference exclude each other."""
    import argparse

    from seda_fast import outputs
    parser = argparse.ArgumentParser()
    outputs.add_arguments(parser, "the results")
    assert outputs.out_dir(parser.parse_args([])) == outputs.DEFAULT_OUT_DIR == Path("seda_fast_out")
    assert outputs.out_dir(parser.parse_args(["--out", str(tmp_path)])) == tmp_path
    assert outputs.out_dir(parser.parse_args(["--update-reference"])) == outputs.REFERENCE_DIR
    assert outputs.REFERENCE_DIR == Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    monkeypatch.setattr(outputs, "REFERENCE_DIR", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="--update-reference needs a source checkout"):
        outputs.out_dir(parser.parse_args(["--update-reference"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", str(tmp_path), "--update-reference"])


def test_demo_rejects_a_bad_thread_count(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--threads", "0"])
    assert exit_.value.code == 2 and "--threads must be >= 1" in capsys.readouterr().err


def test_seed_counts_and_the_pool_size_are_usage_errors_before_any_data_loads(capsys, monkeypatch):
    from seda_fast.apps import demo, study

    monkeypatch.setattr(demo, "fmnist_data", lambda *a, **k: pytest.fail("data loaded before the options were checked"))
    monkeypatch.setattr(study, "load_datasets", lambda *a, **k: pytest.fail("data loaded before the options were checked"))
    for argv, message in ((["demo", "--seeds", "0"], "--seeds must be >= 1, got 0"),
                          (["study", "--quick", "--seeds", "0"], "--seeds must be >= 1, got 0"),
                          (["study", "--quick", "--fmnist-pool", "-5"], "--fmnist-pool must be in [1, 60000]"),
                          (["study", "--fmnist-pool", "60001"], "got 60001")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err, argv


def test_demo_checks_its_device_options_before_loading_data(capsys, monkeypatch):
    from seda_fast.apps import demo

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(demo, "fmnist_data", lambda *a, **k: pytest.fail("data loaded before the options were checked"))
    for argv, message in ((["--device", "cuda"], "torch.cuda.is_available() is False"),
                          (["--device", "meta"], "device must be 'cpu', 'cuda' or 'cuda:N', got 'meta'"),
                          (["--device", "banana"], "got 'banana'"),
                          (["--cuda-graph"], "needs device='cuda' and backend='triton', got device='cpu'")):
        with pytest.raises(SystemExit) as exit_:
            main(["demo", *argv])
        assert exit_.value.code == 2 and message in capsys.readouterr().err, argv
    with pytest.raises(ValueError, match="backend must be one of"):
        demo.run(backend="fused")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="has 1 CUDA device"):
        demo.check_device("cuda:1")
    with pytest.raises(ValueError, match="got device='cuda', backend='auto'"):
        demo.check_device("cuda", cuda_graph=True)
    with pytest.raises(TypeError, match="cuda_graph must be a bool"):
        demo.check_device("cpu", cuda_graph=1)
    assert demo.check_device("cuda:0", "triton", True) == torch.device("cuda", 0)


def test_demo_refuses_the_fused_backend_on_cpu_outside_the_interpreter(monkeypatch):
    from seda_fast.apps import demo
    from seda_fast.ops import runtime

    monkeypatch.setattr(runtime, "interpreter_enabled", lambda: False)
    monkeypatch.setattr(runtime, "interpreter_mode_mismatch", lambda: None)  # (the suite runs under the interpreter)
    with pytest.raises(ValueError, match="on CPU tensors runs only under Triton's interpreter"):
        demo.check_device("cpu", "triton")
    assert demo.check_device("cpu", "eager") == torch.device("cpu")
