"""Bad input raises ValueError/TypeError naming the argument, before any computation."""
import numpy as np
import pytest
import torch
import torch.nn.utils.prune  # noqa: F401 (torch.nn.utils does not import it)

import seda_fast as sf
from seda_fast import validation as val

from helpers import make_batch, make_model, small_config


@pytest.mark.parametrize("field,value,exc", [
    ("visual_dim", 0, ValueError), ("dim", 47, ValueError), ("hidden", 2.5, TypeError),
    ("layers", 0, ValueError), ("learner_steps", 2000, ValueError), ("num_classes", True, TypeError),
    ("center_momentum", 1.5, ValueError), ("center_temperature", 0.0, ValueError),
    ("lambda_sc", float("nan"), ValueError), ("lambda_al", -1.0, ValueError), ("dim", 10**9, ValueError),
])
def test_bad_config(field, value, exc):
    kwargs = dict(visual_dim=8, text_dim=8, num_classes=3)
    kwargs[field] = value
    with pytest.raises(exc, match=field):
        sf.SeDAConfig(**kwargs)


def test_config_dict_round_trip_and_unknown_field():
    cfg = sf.SeDAConfig(visual_dim=8, text_dim=6, num_classes=3, dim=16)
    assert sf.SeDAConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        sf.SeDAConfig.from_dict({**cfg.to_dict(), "dimm": 3})


def test_bad_model_arguments():
    cfg = sf.SeDAConfig(visual_dim=8, text_dim=6, num_classes=3, dim=16, hidden=16)
    with pytest.raises(TypeError, match="config"):
        sf.SeDA({"visual_dim": 8})
    with pytest.raises(ValueError, match="backend"):
        sf.SeDA(cfg, backend="cuda")
    model = sf.SeDA(cfg)
    with pytest.raises(ValueError, match="backend"):
        model.backend = "fast"


@pytest.fixture
def model():
    return make_model()


@pytest.mark.parametrize("visual,exc,match", [
    ([[0.0] * 37], TypeError, "visual must be a torch.Tensor"),
    (torch.randn(37), ValueError, r"visual must have shape \[B, 37\]"),
    (torch.randn(4, 36), ValueError, r"visual must have shape \[B, 37\]"),
    (torch.randn(2, 4, 37), ValueError, "visual must have shape"),
    (torch.randint(0, 3, (4, 37)), TypeError, "visual must be float"),
    (torch.randn(0, 37), ValueError, "visual is an empty batch"),
])
def test_bad_visual(model, visual, exc, match):
    with pytest.raises(exc, match=match):
        model(visual)
    with pytest.raises(exc, match=match):
        model.learner_loss(visual, torch.zeros(4, dtype=torch.long))


def test_bad_labels(model):
    v, y, text = make_batch(model.config, 5)
    with pytest.raises(TypeError, match="labels must be an integer"):
        model(v, y.float())
    with pytest.raises(ValueError, match=r"labels must have shape \[5\]"):
        model(v, y[:4])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 7\)"):
        model(v, torch.tensor([0, 1, 2, 3, 7]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 7\), got values in \[-1, 4\]"):
        model(v, torch.tensor([0, -1, 2, 3, 4]))
    with pytest.raises(TypeError, match="labels must be a torch.Tensor"):
        model(v, [0, 1, 2, 3, 4])


def test_label_range_check_is_one_reduction():
    """The range check reduces the labels once (aminmax: one kernel on a GPU, whose first read-back
    waits for the queue and the second for nothing), not a min and a max each read back."""
    from seda_fast.tools.cost_baselines import record_aten_ops
    labels = torch.tensor([3, 0, 6, 2], dtype=torch.int32)
    names = [o.name for o in record_aten_ops(lambda: val.check_labels(labels, 4, 7))]
    assert names.count("aminmax") == 1 and not {"min", "max", "stack"} & set(names), names


def test_bad_text_and_noise(model):
    v, y, text = make_batch(model.config, 5)
    model.set_stage(2)
    with pytest.raises(ValueError, match="needs text"):
        model(v, y)
    both = r"text must have shape \[7, 21\] \(class texts, one row per class\) or \[5, 21\] \(per-sample texts"
    with pytest.raises(ValueError, match=both + r".*got \[6, 21\]"):
        model(v, y, torch.randn(6, 21))
    with pytest.raises(ValueError, match=both + r".*text_kind='class' asks for the first.*got \[5, 21\]"):
        model(v, y, torch.randn(5, 21), text_kind="class")
    with pytest.raises(ValueError, match=both + r".*text_kind='sample' asks for the second.*got \[7, 21\]"):
        model(v, y, torch.randn(7, 21), text_kind="sample")
    with pytest.raises(ValueError, match=r"text must have shape \[7, 21\]"):
        model(v, y, torch.randn(7, 20), text_kind="class")
    with pytest.raises(ValueError, match="text_kind"):
        model(v, y, text, text_kind="per-class")
    with pytest.raises(ValueError, match=r"noise must have shape \[5, 48\]"):
        model(v, noise=torch.randn(5, 47))


def test_nan_and_inf_reported_in_check_inputs_mode(model):
    v, y, text = make_batch(model.config, 5)
    v[2, 3] = float("nan")
    out = model(v)  # value checks are off by default (they cost a device sync)
    assert torch.isnan(out).any()
    model.check_inputs = True
    with pytest.raises(ValueError, match="visual contains 1 NaN/Inf"):
        model(v)
    v2 = make_batch(model.config, 5)[0]
    text[0, 0] = float("inf")
    model.set_stage(2)
    with pytest.raises(ValueError, match="text contains 1 NaN/Inf"):
        model(v2, y, text)
    with pytest.raises(ValueError, match="noise contains"):
        model(v2, noise=torch.full((5, 48), float("nan")))


def test_mismatched_devices_are_named(model):
    meta = torch.empty(5, 37, device="meta")
    with pytest.raises(ValueError, match="visual is on meta but the model is on cpu"):
        model(meta)


def test_triton_backend_on_cpu_without_interpreter_is_a_clear_error(model, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    model.backend = "triton"
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        model(make_batch(model.config, 2)[0])
    model.backend = "auto"
    assert model.resolved_backend(torch.device("cpu")) == "eager"


def test_a_loss_outside_its_stage_is_a_clear_error_in_training_mode(model):
    """translator_loss in stage 1 (its parameters are frozen: backward would fail deep in autograd)
    and learner_loss in stage 2 (it would move the frozen centers) name the stage and set_stage,
    before touching the centers; in eval mode both losses can be computed and the centers stay."""
    v, y, text = make_batch(model.config, 5)
    model.train()
    with pytest.raises(RuntimeError, match=r"translator_loss is the stage-2 loss but the model is in stage 1: "
                                           r"call model.set_stage\(2\)"):
        model.translator_loss(v, y, text)
    model.learner_loss(v, y)
    centers = model.centers.clone()
    model.set_stage(2)
    with pytest.raises(RuntimeError, match=r"learner_loss is the stage-1 loss but the model is in stage 2: "
                                           r"call model.set_stage\(1\)"):
        model.learner_loss(v, y)
    assert torch.equal(model.centers, centers)
    model.eval()
    assert torch.isfinite(model.learner_loss(v, y)) and torch.equal(model.centers, centers)
    model.set_stage(1)
    assert torch.isfinite(model.translator_loss(v, y, text))


def test_interpreter_mode_changed_after_import_is_a_clear_error(model, monkeypatch):
    """The kernels here were decorated under TRITON_INTERPRET=1 (tests/conftest.py): clearing it now
    is named as a mode mismatch before any launch."""
    from seda_fast.ops.runtime import kernels
    kernels()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    model.backend = "triton"
    with pytest.raises(RuntimeError, match=r"TRITON_INTERPRET is '0' now, but .* was decorated with "
                                           r"TRITON_INTERPRET=1"):
        model(make_batch(model.config, 2)[0])


def test_interpreter_set_after_importing_seda_fast_is_a_clear_error():
    """A fresh process without the variable imports seda_fast (which imports triton), then sets
    TRITON_INTERPRET=1: the fused call says to set it before Python starts instead of failing in
    Triton with an InterpreterError."""
    import os
    import subprocess
    import sys
    code = (
        "import os, torch\n"
        "import seda_fast as sf\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "m = sf.SeDA(sf.SeDAConfig(visual_dim=5, text_dim=3, num_classes=2, dim=16, hidden=16), backend='triton')\n"
        "try:\n"
        "    with torch.no_grad():\n"
        "        m(torch.randn(2, 5))\n"
        "except RuntimeError as e:\n"
        "    print('ERROR:', e)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ERROR: TRITON_INTERPRET=1 is set now, but triton's own @triton.jit library" in proc.stdout
    assert "before Python starts" in proc.stdout and "InterpreterError" not in proc.stdout + proc.stderr


def test_unchecked_inputs_skips_the_checks_and_restores_them(model):
    v = make_batch(model.config, 5)[0]
    v[1, 0] = float("inf")
    model.check_inputs = True
    with model.unchecked_inputs():
        assert not torch.isfinite(model(v)).all()  # no check: the Inf reaches the output
    assert model.check_inputs
    with pytest.raises(KeyError), model.unchecked_inputs():
        raise KeyError("a failure inside the block")
    assert model.check_inputs  # restored on the way out of a raise too
    with pytest.raises(ValueError, match="visual contains 1 NaN/Inf"):
        model(v)


def test_stage_is_an_int_and_the_config_is_frozen(model):
    for bad, exc in ((True, TypeError), (1.0, TypeError), (3, ValueError)):
        with pytest.raises(exc, match="stage"):
            model.set_stage(bad)
    assert model.stage == 1
    assert type(model.set_stage(np.int64(2)).stage) is int and model.stage == 2  # numpy integers are ints
    cfg = sf.SeDAConfig(visual_dim=np.int64(8), text_dim=6, num_classes=np.int32(3), dim=16)
    assert type(cfg.visual_dim) is int and type(cfg.num_classes) is int  # (JSON-serialisable)
    with pytest.raises(AttributeError, match="dim"):  # dataclasses.FrozenInstanceError
        model.config.dim = 32


def _count_launches():
    from seda_fast.ops.runtime import kernels
    return kernels().count_launches()


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_a_bad_generator_is_refused_before_the_centers_move(backend):
    """The generator is checked with the other arguments: the center EMA (a kernel launch on
    triton) runs only after it."""
    model = make_model()
    model.backend = backend
    v, y, text = make_batch(model.config, 5)
    centers = model.centers.clone()
    with _count_launches() as launches:
        with pytest.raises(TypeError, match="generator must be a torch.Generator"):
            model.learner_loss(v, y, generator="seed")
        meta = make_model().to("meta")  # (no CUDA here: a CPU generator for a model elsewhere)
        with pytest.raises(ValueError, match="generator is on cpu but the model is on meta"):
            meta(v.to("meta"), y.to("meta"), generator=torch.Generator())
        model.set_stage(2)
        with pytest.raises(TypeError, match="generator must be a torch.Generator"):
            model.translator_loss(v, y, text, generator=7)
    assert launches.count == 0
    assert torch.equal(model.centers, centers) and not model.centers_initialized.any()


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_a_part_cast_on_its_own_is_named_before_anything_runs(backend):
    model = make_model()
    model.backend = backend
    v, y, _ = make_batch(model.config, 5)
    model.learner.half()
    with _count_launches() as launches, pytest.raises(TypeError, match="learner.in_x.weight is torch.float16"):
        model.learner_loss(v, y)
    assert launches.count == 0 and not model.centers_initialized.any()
    model.learner.float()
    model.head.half()
    with torch.no_grad(), pytest.raises(TypeError, match="head.weight is torch.float16 but visual_proj"):
        model.eval()(v)


def test_check_inputs_reports_values_the_models_dtype_cannot_hold():
    """fp16 holds |x| <= 65504: a finite fp32 input beyond it would turn Inf in the cast, whether the
    parameters are fp16 or fp16 autocast computes with fp32 ones."""
    v = make_batch(small_config(), 5)[0]
    v[1, 2] = 1e5
    for dtype, autocast in ((torch.float16, False), (torch.float32, True)):
        model = make_model(dtype=dtype).eval()
        model.check_inputs = True
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16, enabled=autocast):
            with pytest.raises(ValueError, match=r"visual has 1 value\(s\) beyond torch.float16's range"):
                model(v)
            assert torch.isfinite(model(v.clamp(-6e4, 6e4))).all()
    model.check_inputs = True
    with torch.no_grad():
        model(v)  # fp32 parameters, no autocast: 1e5 is in range
        v[1, 2] = float("inf")
        with pytest.raises(ValueError, match="visual contains 1 NaN/Inf"):
            model(v)
        v[1, 2] = 65519.0  # beyond fp16's largest finite value, but the cast rounds it down to it
        model.half()(v)


def test_a_pruned_or_weight_normed_layer_is_read_through_its_attribute():
    """Pruning and parametrizations take ``weight`` out of the module's parameter dict; the dtype
    check then reads the computed attribute (as the layers themselves do)."""
    model = make_model().eval()
    torch.nn.utils.prune.l1_unstructured(model.head, "weight", 0.3)
    torch.nn.utils.parametrizations.weight_norm(model.aux_visual)
    v = make_batch(model.config, 5)[0]
    with torch.no_grad():
        assert model(v).shape == (5, model.config.num_classes)
    model.train().learner_loss(v, torch.arange(5) % model.config.num_classes).backward()


def test_arguments_a_call_does_not_use_are_refused(model):
    v, y, text = make_batch(model.config, 5)
    with pytest.raises(ValueError, match="noise= is inference's start noise"):
        model(v, y, noise=torch.randn(5, model.config.dim))
    with pytest.raises(ValueError, match="generator= seeds the training losses"):
        model(v, generator=torch.Generator())
    with pytest.raises(ValueError, match="text_kind"):
        model(v, text_kind="per-class")
    model(v, y, text)  # stage 1 reads no text: a loop may pass it in both stages


def test_launch_options_and_fused_impls_check_their_arguments():
    from seda_fast.ops.runtime import _LAUNCH, launch_options
    before = dict(_LAUNCH)
    for kwargs, match in (({"fold": "False"}, "fold must be True, False or None"),
                          ({"split_k": "no"}, "split_k must be True or False"),
                          ({"tile_plan": None}, "tile_plan must be True or False"),
                          ({"pdl": 3}, "pdl must be True, False or None")):
        with pytest.raises(TypeError, match=match), launch_options(**kwargs):
            pass
    assert _LAUNCH == before
    with launch_options(fold=False, pdl=None):
        assert _LAUNCH["fold"] is False
    with launch_options(split_k=np.True_):  # numpy's bools are bools
        assert _LAUNCH["split_k"] is True
    with pytest.raises(TypeError, match="device must be a torch.device"):
        sf.fused_impls(3.0)
    with pytest.raises(ValueError, match="device must be a device this torch can name"):
        sf.fused_impls("bogus")
    assert sf.fused_impls(torch.device("cpu")) == sf.fused_impls("cpu")


def test_triton_refuses_a_float64_model_under_autocast_too():
    """Autocast does not lower fp64 in the eager backend, so the fused path would otherwise compute
    an fp64 model in bf16 where eager keeps fp64."""
    model = make_model(dtype=torch.float64).eval()
    model.backend = "triton"
    v = make_batch(model.config, 5)[0]
    for autocast in (False, True):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), \
                pytest.raises(TypeError, match="float32/float16/bfloat16 parameters"):
            model(v)


def test_triton_takes_strided_labels_and_any_float_noise_as_eager_does():
    """The model layer hands the kernels contiguous int64 labels and noise in the parameters' dtype,
    so strided or expanded labels and fp64, transposed or expanded noise work on both backends,
    with the numbers of their contiguous copies."""
    from seda_fast import presets
    torch.manual_seed(0)
    model = sf.SeDA(presets.config("tiny"), backend="triton")
    cfg = model.config
    v = torch.randn(4, cfg.visual_dim)
    y = torch.tensor([0, 9, 2, 9, 1, 9, 0, 9])[::2]  # strided
    losses = []
    for labels in (y, y.contiguous()):
        state = {k: t.clone() for k, t in model.state_dict().items()}
        losses.append(model.learner_loss(v, labels, generator=torch.Generator().manual_seed(3)).detach())
        model.load_state_dict(state)
    assert torch.equal(losses[0], losses[1])
    model.eval()
    noise = torch.randn(cfg.dim, 4, dtype=torch.float64)
    with torch.no_grad():
        ref = model(v, noise=noise.t().float().contiguous())
        for strided in (noise.t(), noise[:, :1].t().expand(4, cfg.dim)):
            want = ref if strided.stride(0) else model(v, noise=strided.float().contiguous())
            torch.testing.assert_close(model(v, noise=strided), want, rtol=0, atol=0)
