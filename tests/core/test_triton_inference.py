"""The triton backend's fused inference against the eager reference, through the model and the
backend: the row-block kernels (``fused_impl="rowblock"``, the default of this file's models) and,
where marked, the phase schedule (``"phases"``; its launcher is tested in
``tests/ops/test_infer_phases.py``).

On CPU every kernel runs in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1);
on a CUDA machine the same tests run the compiled kernels (benchmarks/gpu_check.py), bf16 included.
Grids stay at 1-3 programs and K <= 4 so the whole file runs in seconds on 2 cores.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import case_ids, assert_flash_rule, make_batch, make_model, rel
import seda_fast as sf
from seda_fast.tools import cost_model
from seda_fast import reference
from seda_fast.backends import TRITON
from seda_fast.ops import semantic_sampler, translator_pfin, weights
from seda_fast.ops.runtime import kernels

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
K = kernels()


IMPLS = ("rowblock", "phases")  # the implementations the interpreter runs ("persistent" needs CUDA)


def _model(dtype=torch.float32, seed=0, impl="rowblock", **overrides):
    model = make_model(seed=seed, dtype=dtype, **overrides).to(DEVICE).eval()
    model.fused_impl = impl
    return model


def _visual(model, batch, seed=1, dtype=torch.float32):
    return make_batch(model.config, batch, seed=seed, dtype=dtype)[0].to(DEVICE)


PARITY_CASES = [  # (batch, layers, K, explicit start noise, classes)
    (1, 1, 1, False, 7),
    (33, 3, 4, True, 7),
    (33, 1, 4, False, 1),
    (1, 3, 1, True, 7),
    (17, 2, 2, True, 7),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch,layers,steps,noise,classes", PARITY_CASES,
                         ids=case_ids("batch,layers,steps,noise,classes", PARITY_CASES))
def test_fp32_parity(batch, layers, steps, noise, classes, impl):
    model = _model(layers=layers, learner_steps=steps, translator_steps=steps, num_classes=classes, impl=impl)
    v = _visual(model, batch)
    xi = torch.randn(batch, model.config.dim, device=DEVICE) if noise else None
    with torch.no_grad():
        ref = reference.infer(model, v, xi)
        out = TRITON.infer(model, v, xi)
    for name, o, r in zip(("logits", "s", "m"), out, ref):
        assert o.shape == r.shape and o.dtype == r.dtype, name
        assert rel(o, r) < 1e-5, f"{name}: relative error {rel(o, r):.2e}"


@pytest.mark.parametrize("fused_impl", ["rowblock", "phases"])
def test_model_dispatch_and_semantic(fused_impl):
    """``SeDA(backend="triton")`` goes through the fused path for infer, forward and semantic; the
    semantic feature alone is the sampler's one launch ("rowblock") or the phase schedule's prefix
    (one launch per phase; on CUDA a replay of its captured graph, no launch from Python)."""
    model = _model(learner_steps=3, translator_steps=2)
    model.fused_impl = fused_impl
    v = _visual(model, 5)
    with torch.no_grad():
        ref_logits, ref_s, _ = reference.infer(model, v)
        model.backend = "triton"
        assert rel(model(v), ref_logits) < 1e-5
        assert rel(model.semantic(v), ref_s) < 1e-5
        with K.count_launches() as c:
            model.semantic(v)
    n = K.infer_phases_module.semantic_phase_count(model.config.layers, 3, fold=True)  # B = 5: folded
    want = {"rowblock": ["semantic_sampler_kernel"],
            "phases": [] if DEVICE.type == "cuda" else ["infer_phase_kernel"] * n}[fused_impl]
    assert c.names == want


def _lowp_rule(dtype, batch=33, **overrides):
    """flash-attention's rule: kernel error <= 2 x (torch same-dtype error) + atol, vs fp32."""
    model32 = _model(layers=2, learner_steps=3, translator_steps=3, **overrides)
    model_lp = _model(dtype=dtype, layers=2, learner_steps=3, translator_steps=3, **overrides)
    v = _visual(model32, batch)
    xi = torch.randn(batch, model32.config.dim, device=DEVICE)
    with torch.no_grad():
        ref32 = reference.infer(model32, v, xi)
        ref_lp = reference.infer(model_lp, v.to(dtype), xi)
        out = TRITON.infer(model_lp, v.to(dtype), xi)
    atol = 1e-3 if dtype == torch.float16 else 8e-3
    for name, o, r_lp, r32 in zip(("logits", "s", "m"), out, ref_lp, ref32):
        assert o.dtype == dtype, name
        assert_flash_rule(name, o, r_lp, r32, atol)


def test_fp16_flash_attention_rule():
    _lowp_rule(torch.float16)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="bf16 arithmetic and tl.dot are unreliable in the "
                    "Triton interpreter (CONVENTIONS.md): bf16 parity runs on the GPU (benchmarks/gpu_check.py)")
def test_bf16_flash_attention_rule():
    _lowp_rule(torch.bfloat16)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="the throughput tiles (B > 256) are a GPU-sized run")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_throughput_regime_parity(dtype):
    model = _model(dtype=dtype, dim=512, hidden=1024, layers=2, learner_steps=10, translator_steps=10)
    model32 = _model(dim=512, hidden=1024, layers=2, learner_steps=10, translator_steps=10)
    v = _visual(model32, 1024)
    with torch.no_grad():
        ref32 = reference.infer(model32, v)
        ref_lp = reference.infer(model, v.to(dtype))
        out = TRITON.infer(model, v.to(dtype))
    for name, o, r_lp, r32 in zip(("logits", "s", "m"), out, ref_lp, ref32):
        if dtype == torch.float32:
            assert rel(o, r32) < 1e-4, name
        else:
            assert_flash_rule(name, o, r_lp, r32, 8e-3)


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


ALLOC_OPS = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided"}


def test_launch_count_vs_eager_ops():
    """Latency regime: 2 launches per inference call (promise: <= 3), one custom op at the torch
    level and, inside it, no device work but the two launches once the weight-only tables are
    cached; the eager reference dispatches hundreds of ops."""
    model = _model(layers=2, learner_steps=4, translator_steps=4)
    v = _visual(model, 9)
    sw, n_hidden = weights.op_args(model, "semantic")
    tw, _ = weights.op_args(model, "translator")
    T, eps = model.config.diffusion_steps, model.visual_proj.norm.eps
    with torch.no_grad():
        TRITON.infer(model, v)  # builds the cached tables
        with _OpCounter() as eager:
            reference.infer(model, v)
        with _OpCounter() as outer, K.count_launches() as launches:
            TRITON.infer(model, v)
        with _OpCounter() as inner:
            z, s = semantic_sampler.semantic_sampler_impl(v, sw, n_hidden, T, 4, eps, torch.float32)
            translator_pfin.translator_pfin_impl(s, z, None, tw, n_hidden, T, 4, torch.float32)
    assert launches.count == 2 <= 3, launches.names
    assert launches.names == ["semantic_sampler_kernel", "translator_pfin_kernel"]
    assert outer.ops == ["semantic_sampler", "translator_pfin"]
    allowed = ALLOC_OPS | ({"copy_", "set_"} if DEVICE.type == "cpu" else set())  # interpreter's arg copies
    assert set(inner.ops) <= allowed, f"steady-state fused call ran torch ops {sorted(set(inner.ops))}"
    assert len(eager.ops) > 50 * launches.count
    print(f"\nlaunches per fused inference: {launches.count}; eager aten ops: {len(eager.ops)}")


@pytest.mark.parametrize("impl", IMPLS)
def test_torch_compile_traces_the_triton_backend(impl):
    """The fused path is a torch.library custom op, so torch.compile(fullgraph=True) traces a
    triton-backend model with no graph break and gets the same numbers."""
    torch._dynamo.reset()
    model = _model(learner_steps=2, translator_steps=2, impl=impl)
    model.backend = "triton"
    v = _visual(model, 5)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        expect = model(v)
        assert torch.equal(compiled(v), expect)


@pytest.mark.parametrize("impl", IMPLS)
def test_table_cache_follows_weights(impl):
    """The cached time-embedding tables are rebuilt when a weight changes in place."""
    model = _model(learner_steps=2, translator_steps=2, impl=impl)
    v = _visual(model, 3)
    with torch.no_grad():
        TRITON.infer(model, v)
        model.translator.time_out.weight.mul_(1.5)
        model.learner.time_in.bias.add_(0.25)
        out, ref = TRITON.infer(model, v), reference.infer(model, v)
    for o, r in zip(out, ref):
        assert rel(o, r) < 1e-5


@pytest.mark.parametrize("impl", IMPLS)
def test_float64_model_is_rejected(impl):
    model = _model(impl=impl).double()
    with pytest.raises(TypeError, match="float32/float16/bfloat16"):
        TRITON.infer(model, _visual(model, 2).double())


def test_block_heuristic_regimes():
    lat = K.pick_blocks(64, 512, 1024, 1280, torch.bfloat16)
    thr = K.pick_blocks(16384, 512, 1024, 1280, torch.bfloat16)
    f32 = K.pick_blocks(16384, 512, 1024, 1280, torch.float32)
    assert (lat.BM, thr.BM, f32.BM) == (16, 64, 16)
    small = K.pick_blocks(3, 8, 10, 5, torch.bfloat16)
    assert min(small.BN, small.BK) >= 16  # tl.dot minimum, powers of two
    for b in (lat, thr, f32, small):
        assert b.BN & (b.BN - 1) == 0 and b.BK & (b.BK - 1) == 0


def test_cost_model_flops_match_the_reference():
    """Per-row matmul FLOPs of the cost model = torch's FLOP counter on the eager reference (the
    batch-independent time-MLP tables cancel in the difference of two batch sizes)."""
    model = _model(layers=3, learner_steps=3, translator_steps=2)
    counts = []
    for batch in (2, 5):
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            reference.infer(model, _visual(model, batch))
        counts.append(fc.get_total_flops())
    assert (counts[1] - counts[0]) / 3 == cost_model.inference_flops(model.config, 1)
    cost = cost_model.inference_cost(model.config, 64)
    assert cost.floor_s == max(cost.flops / 790e12, cost.bytes / 4.3e12) > 0


def test_throughput_tiles_in_the_interpreter():
    """B > 256 in fp16 picks the 64-row throughput tiles: 5 programs, the last one partial."""
    assert K.pick_blocks(300, 48, 80, 37, torch.float16).BM == 64
    _lowp_rule(torch.float16, batch=300)


def test_grad_mode_never_silently_drops_autograd():
    """The fused inference chain has no backward: with autograd recording, "triton" refuses clearly and
    "auto" would run eager; under no_grad the fused path runs."""
    model = _model(learner_steps=2, translator_steps=2)
    v = _visual(model, 3)
    model.backend = "triton"
    with pytest.raises(RuntimeError, match="no backward"):
        model(v)
    with torch.no_grad(), K.count_launches() as c:
        model(v)
    assert c.count == 2
    with torch.inference_mode():
        model(v)
    model.backend = "auto"
    out = model(v)
    assert out.requires_grad  # eager path, gradients flow


def test_checkpoint_trained_eager_predicts_the_same_on_triton(tmp_path):
    """A model trained on the eager backend, saved and loaded into a triton-backend model, predicts
    the same logits (the state_dict does not depend on the backend)."""
    model = _model(learner_steps=2, translator_steps=2).train()
    v, y, text = make_batch(model.config, 12)
    for stage in (1, 2):
        model.set_stage(stage)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(3):
            loss = model(v, y, text, generator=torch.Generator().manual_seed(stage))
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.save({"config": model.config.to_dict(), "state_dict": model.state_dict()}, tmp_path / "ckpt.pt")
    ckpt = torch.load(tmp_path / "ckpt.pt")
    loaded = sf.SeDA(sf.SeDAConfig.from_dict(ckpt["config"]), backend="triton").to(DEVICE)
    loaded.load_state_dict(ckpt["state_dict"])
    model.eval()
    with torch.no_grad():
        assert rel(loaded(v), model(v)) < 1e-5
        assert torch.equal(loaded(v), loaded(v))  # fixed reduction order: bitwise run to run


@settings(max_examples=6, deadline=None, derandomize=True)
@given(batch=st.integers(1, 20), dim=st.integers(1, 20).map(lambda h: 2 * h), hidden=st.integers(1, 40),
       visual_dim=st.integers(1, 40), classes=st.integers(1, 9), layers=st.integers(1, 3),
       steps=st.integers(1, 3))
def test_fuzz_shapes_match_eager(batch, dim, hidden, visual_dim, classes, layers, steps):
    """Any width (masking, not multiples of 16), any K >= 1, layers >= 1: fused == eager."""
    torch.manual_seed(0)
    cfg = sf.SeDAConfig(visual_dim=visual_dim, text_dim=5, num_classes=classes, dim=dim, hidden=hidden,
                        layers=layers, learner_steps=steps, translator_steps=steps)
    model = sf.SeDA(cfg, backend="triton").to(DEVICE).eval()
    v = torch.randn(batch, visual_dim, device=DEVICE)
    with torch.no_grad():
        out, ref = TRITON.infer(model, v), reference.infer(model, v)
    for o, r in zip(out, ref):
        assert rel(o, r) < 1e-5


@pytest.mark.parametrize("amp", [torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
    DEVICE.type != "cuda", reason="bf16 arithmetic is unreliable in the Triton interpreter (CONVENTIONS.md)"))])
def test_autocast_runs_the_fused_chain_in_the_autocast_dtype(amp):
    """Under torch.autocast the fused path computes in the autocast dtype (weights cast once and
    cached) like the eager linears do, within the flash-attention rule of a model in that dtype."""
    model = _model(layers=2, learner_steps=3, translator_steps=3)
    model16 = _model(dtype=amp, layers=2, learner_steps=3, translator_steps=3)
    model.backend = "triton"
    v = _visual(model, 9)
    with torch.no_grad():
        ref32 = reference.infer(model, v)
        ref16 = reference.infer(model16, v.to(amp))
        with torch.autocast(DEVICE.type, dtype=amp):
            out = model.infer(v)
            with K.count_launches() as c:
                again = model.infer(v)
    assert c.count == 2 and all(torch.equal(a, b) for a, b in zip(out, again))
    for name, o, r16, r32 in zip(("logits", "s", "m"), out, ref16, ref32):
        assert o.dtype == amp, name
        assert_flash_rule(name, o, r16, r32, 1e-3 if amp == torch.float16 else 8e-3)


def test_fused_impl_knob():
    """``fused_impl`` is validated, "auto" runs the cost model's pick (the phase schedule: one launch
    per phase), "persistent" says it needs CUDA, and the knob is not in the state_dict."""
    model = _model(layers=2, learner_steps=2, translator_steps=3, impl="auto")
    model.backend = "triton"
    v = _visual(model, 5)
    with pytest.raises(ValueError, match="fused_impl must be one of"):
        model.fused_impl = "fastest"
    assert sf.fused_impls() == ("rowblock", "phases", "persistent")
    with torch.no_grad(), K.count_launches() as c:
        out = model.infer(v)
    assert c.count == K.infer_phases_module.phase_count(2, 2, 3, fold=True) and set(c.names) == {"infer_phase_kernel"}
    for o, r in zip(out, reference.infer(model, v)):
        assert rel(o, r) < 1e-5
    if DEVICE.type == "cpu":
        assert sf.fused_impls(DEVICE) == ("rowblock", "phases")
        model.fused_impl = "persistent"
        with pytest.raises(RuntimeError, match="needs a CUDA device"), torch.no_grad():
            model.infer(v)
    assert "fused_impl" not in str(list(model.state_dict()))
    del model._fused_impl  # a whole model pickled before the knob existed
    assert model.fused_impl == "auto"
