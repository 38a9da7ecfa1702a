"""The Translator + PFIN + head op (``seda_fast/ops/translator_pfin.py`` <->
``kernels/translator_pfin.py``): its custom op's schema and fake (with and without start noise), and
the launcher's argument checks (before any launch). Parity of the whole inference chain:
``tests/core/test_triton_inference.py``."""
import pytest
import torch

from helpers import make_batch, make_model
from seda_fast.ops import semantic_sampler, weights
from seda_fast.ops.runtime import kernels

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
K = kernels()


def _model(**overrides):
    return make_model(**overrides).to(DEVICE).eval()


def _visual(model, batch, seed=1):
    return make_batch(model.config, batch, seed=seed)[0].to(DEVICE)


def test_custom_op_passes_opcheck():
    model = _model(learner_steps=2, translator_steps=2)
    v = _visual(model, 3)
    tw, n_hidden = weights.op_args(model, "translator")
    with torch.no_grad():
        z, s = semantic_sampler.semantic_sample(model, v)
    for noise in (None, torch.randn_like(s)):
        torch.library.opcheck(torch.ops.seda_fast.translator_pfin.default,
                              (s, z, noise, tw, n_hidden, model.config.diffusion_steps, 2, torch.float32),
                              test_utils=("test_schema", "test_faketensor"))


def test_translator_launcher_rejects_bad_noise():
    model = _model()
    v = _visual(model, 4)
    with torch.no_grad():
        z, s = semantic_sampler.semantic_sample(model, v)
    den, pf = model.translator, model.pfin
    t = weights.prepared(den, model.config.diffusion_steps, model.config.translator_steps, DEVICE)
    args = [den.in_x.weight, den.in_c.weight, den.in_c.bias, t["wh"], t["bh"], den.out.weight, den.out.bias,
            pf.p_m.weight, pf.p_u.weight, pf.p_u.bias, pf.down.weight, pf.down.bias, pf.g_m.weight,
            pf.g_u.weight, pf.g_u.bias, model.head.weight, model.head.bias, t["e"], t["ddim"], 0.1, 0.9]
    with K.count_launches() as c:
        with pytest.raises(ValueError, match="noise"):
            K.translator_pfin(s, z, torch.zeros(3, model.config.dim, device=DEVICE), *args)
        with pytest.raises(ValueError, match="head_b"):
            K.translator_pfin(s, z, None, *args[:16], args[16][:-1], *args[17:])
    assert c.count == 0
