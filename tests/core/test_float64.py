"""A float64 model is a float64 reference: the eager backend's inference chain against an
implementation written here from the math alone (numpy float64: cosine schedule, DDIM table, time
embedding, denoiser, PFIN), within 1e-12."""
import math

import numpy as np
import torch

import seda_fast as sf
from seda_fast import reference


def _np(t):
    return t.detach().double().numpy()


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _lin(x, lin, bias=True):
    y = x @ _np(lin.weight).T
    return y + _np(lin.bias) if bias and lin.bias is not None else y


def _alpha_bar(T):
    f = [math.cos(((t / T) + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(T + 1)]
    abar = [1.0]
    for t in range(1, T + 1):
        abar.append(abar[-1] * (1.0 - min(1.0 - f[t] / f[t - 1], 0.999)))
    return abar


def _time(den, t, d):
    half = d // 2
    w = np.exp(-math.log(10000.0) * np.arange(half) / half)
    emb = np.concatenate([np.sin(t * w), np.cos(t * w)])
    return _lin(_silu(_lin(emb, den.time_in)), den.time_out)


def _denoise(den, x, e, cond):
    h = _silu(x @ _np(den.in_x.weight).T + cond + e)
    for layer in den.hidden:
        h = h + _silu(_lin(h, layer))
    return _lin(h, den.out)


def _sample(model, den, cond_vec, K, m=None):
    T, d = model.config.diffusion_steps, model.config.dim
    abar = _alpha_bar(T)
    tau = [(2 * k * T + K) // (2 * K) for k in range(K + 1)]
    cond = _lin(cond_vec, den.in_c)
    x = math.sqrt(abar[T]) * cond_vec
    for k in range(K, 0, -1):
        t, tp = tau[k], tau[k - 1]
        a = math.sqrt(1 - abar[tp]) / math.sqrt(1 - abar[t])
        b = math.sqrt(abar[tp]) - math.sqrt(abar[t]) * a
        e = _time(den, t, d)
        x0 = _denoise(den, x, e, cond)
        if m is not None:
            pf = model.pfin
            p = m @ _np(pf.p_m.weight).T + _lin(x0, pf.p_u) + e
            g = 1.0 / (1.0 + np.exp(-(m @ _np(pf.g_m.weight).T + _lin(x0, pf.g_u))))
            m = m + g * _lin(_silu(p), pf.down)
        x = a * x + b * x0
    return x, m


def test_float64_model_matches_a_float64_recompute():
    torch.manual_seed(7)
    cfg = sf.SeDAConfig(visual_dim=11, text_dim=5, num_classes=3, dim=10, hidden=14, layers=3,
                        learner_steps=4, translator_steps=3, diffusion_steps=50)
    model = sf.SeDA(cfg, backend="eager").double().eval()
    v = torch.randn(5, 11, dtype=torch.float64)
    with torch.no_grad():
        logits, s, m = reference.infer(model, v)
    y = _lin(_np(v), model.visual_proj.linear)
    mu, var = y.mean(1, keepdims=True), y.var(1, keepdims=True)
    z = (y - mu) / np.sqrt(var + model.visual_proj.norm.eps) * _np(model.visual_proj.norm.weight) \
        + _np(model.visual_proj.norm.bias)
    s_ref, _ = _sample(model, model.learner, z, cfg.learner_steps)
    _, m_ref = _sample(model, model.translator, s_ref, cfg.translator_steps, m=z)
    logits_ref = _lin(m_ref, model.head)
    for got, want in ((s, s_ref), (m, m_ref), (logits, logits_ref)):
        assert got.dtype == torch.float64
        assert np.abs(_np(got) - want).max() <= 1e-12 * max(1.0, np.abs(want).max())


def test_float64_center_ema_is_float64():
    """The center EMA of a float64 model: class means and ``alpha mu + (1 - alpha) mean`` in
    float64, against the same arithmetic done here in numpy float64, within 1e-15."""
    torch.manual_seed(3)
    cfg = sf.SeDAConfig(visual_dim=11, text_dim=5, num_classes=4, dim=10, hidden=14)
    model = sf.SeDA(cfg, backend="eager").double().train()
    g = torch.Generator().manual_seed(4)
    mu = np.zeros((4, 10))
    seen = np.zeros(4, bool)
    for _ in range(3):
        z = torch.randn(9, 10, dtype=torch.float64, generator=g)
        y = torch.randint(0, 3, (9,), generator=g)  # class 3 never appears
        reference.update_centers(model, z, y)
        for c in range(4):
            rows = _np(z)[_np(y) == c]
            if len(rows):
                mean = rows.sum(0) / len(rows)
                mu[c] = 0.9 * mu[c] + (1 - 0.9) * mean if seen[c] else mean
                seen[c] = True
    assert model.centers.dtype == torch.float64
    assert np.abs(_np(model.centers) - mu).max() <= 1e-15
    assert model.centers_initialized.tolist() == seen.tolist()
