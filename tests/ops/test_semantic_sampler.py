"""The projector + Learner sampler op (``seda_fast/ops/semantic_sampler.py`` <->
``kernels/semantic_sampler.py``): its custom op's schema and fake, and the launcher's argument checks
(before any launch). Parity of the whole inference chain: ``tests/core/test_triton_inference.py``."""
import pytest
import torch

from helpers import make_batch, make_model, rel
from seda_fast import reference
from seda_fast.ops import semantic_sampler, weights
from seda_fast.ops.runtime import kernels

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
K = kernels()


def _model(**overrides):
    return make_model(**overrides).to(DEVICE).eval()


def _visual(model, batch, seed=1):
    return make_batch(model.config, batch, seed=seed)[0].to(DEVICE)


@pytest.mark.parametrize("batch,layers,steps", [pytest.param(1, 1, 1, id="B1-L1-K1"),
                                                 pytest.param(19, 3, 3, id="B19-L3-K3")])
def test_op_matches_the_reference(batch, layers, steps):
    """``(z, s)`` of the op = the reference's projector and Learner sampler, fp32."""
    model = _model(layers=layers, learner_steps=steps)
    v = _visual(model, batch)
    with torch.no_grad():
        z, s = semantic_sampler.semantic_sample(model, v)
        z_ref = reference.project(model.visual_proj, v)
        s_ref = reference.learner_sample(model, z_ref)
    assert rel(z, z_ref) < 1e-5 and rel(s, s_ref) < 1e-5


def test_custom_op_passes_opcheck():
    model = _model(learner_steps=2, translator_steps=2)
    v = _visual(model, 3)
    sw, n_hidden = weights.op_args(model, "semantic")
    T, eps = model.config.diffusion_steps, model.visual_proj.norm.eps
    torch.library.opcheck(torch.ops.seda_fast.semantic_sampler.default, (v, sw, n_hidden, T, 2, eps, torch.float32),
                          test_utils=("test_schema", "test_faketensor"))


def _launcher_args(batch=3, dtype=torch.float32):
    model = _model()
    vp, den = model.visual_proj, model.learner
    tables = weights.prepared(den, model.config.diffusion_steps, model.config.learner_steps, DEVICE)
    v = _visual(model, batch).to(dtype)
    return model, [v, vp.linear.weight, vp.linear.bias, vp.norm.weight, vp.norm.bias, vp.norm.eps,
                   den.in_x.weight, den.in_c.weight, den.in_c.bias, tables["wh"], tables["bh"],
                   den.out.weight, den.out.bias, tables["e"], tables["ddim"], 0.1]


@pytest.mark.parametrize("index,bad,name", [
    (0, lambda t: t[:, :-1].contiguous(), "proj_w"),  # visual width != Dv
    (0, lambda t: t.t(), "visual"),                # transposed: not contiguous
    (0, lambda t: t.double(), "visual"),           # unsupported dtype
    (1, lambda t: t[:, :5], "proj_w"),
    (6, lambda t: t.half(), "w_x"),                # dtype mismatch
    (7, lambda t: t.t().contiguous().t(), "w_c"),  # not contiguous
    (9, lambda t: t[:, :3], "w_hidden"),
    (13, lambda t: t[:, 1:], "e_table"),
    (14, lambda t: t[:-1], "ddim"),
])
def test_launcher_rejects_bad_input_before_launch(index, bad, name):
    _, args = _launcher_args()
    args[index] = bad(args[index])
    with K.count_launches() as c, pytest.raises(ValueError, match=name):
        K.semantic_sample(*args)
    assert c.count == 0


def test_weights_past_int32_indexing_are_rejected_before_launch():
    """Large-index safety: batch rows are addressed from an int64 base (program id cast to int64);
    weight matrices use 32-bit offsets, so one with >= 2^31 elements is a clear error, not a wrap.
    (An expanded tensor stands in for the 8 GiB weight: nothing is allocated.)"""
    _, args = _launcher_args()
    wide = 2**16
    args[0] = torch.randn(1, wide, device=DEVICE)
    args[1] = torch.zeros(1, device=DEVICE).expand(2**15, wide)  # [d, Dv]: 2^31 elements
    with K.count_launches() as c, pytest.raises(ValueError, match="proj_w has 2147483648 elements"):
        K.semantic_sample(*args)
    assert c.count == 0
