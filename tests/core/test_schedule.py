import math

import numpy as np
import pytest
import torch

from helpers import case_ids

from seda_fast import schedule


def _closed_form_abar(T):
    t = np.arange(T + 1, dtype=np.float64)
    f = np.cos(((t / T) + 0.008) / 1.008 * np.pi / 2) ** 2
    beta = np.minimum(1 - f[1:] / f[:-1], 0.999)
    return np.concatenate([[1.0], np.cumprod(1 - beta)])


@pytest.mark.parametrize("T", [1, 7, 1000])
def test_alpha_bar_matches_closed_form(T):
    abar = schedule.alpha_bar(T)
    assert abar.dtype == torch.float64 and abar.shape == (T + 1,)
    np.testing.assert_allclose(abar.numpy(), _closed_form_abar(T), rtol=1e-12, atol=0)
    assert abar[0] == 1.0
    assert torch.all(abar[1:] < abar[:-1])


def test_sampling_timesteps_rounding():
    assert schedule.sampling_timesteps(1000, 10) == [0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]
    # 1000 / 16 * k has halves (62.5): rounded up; endpoints fixed.
    tau = schedule.sampling_timesteps(1000, 16)
    assert tau[0] == 0 and tau[-1] == 1000 and tau[1] == 63
    assert tau == [math.floor(k * 1000 / 16 + 0.5) for k in range(17)]
    assert schedule.sampling_timesteps(1000, 3) == [0, 333, 667, 1000]
    with pytest.raises(ValueError, match="K"):
        schedule.sampling_timesteps(10, 11)


T_K_CASES = [(1000, 10), (1000, 1), (50, 7)]


@pytest.mark.parametrize("T,K", T_K_CASES, ids=case_ids("T,K", T_K_CASES))
def test_ddim_step_is_exact_on_a_perfect_prediction(T, K):
    """With x0_hat = x0, one DDIM step maps the noised x_t onto the noised x_{t'} (same eps)."""
    abar = _closed_form_abar(T)
    tau = schedule.sampling_timesteps(T, K)
    coef = schedule.ddim_coefficients(T, K)
    assert coef.shape == (K, 2) and coef.dtype == torch.float64
    x0, eps = 0.37, -1.21
    for k in range(1, K + 1):
        t, tp = tau[k], tau[k - 1]
        x_t = math.sqrt(abar[t]) * x0 + math.sqrt(1 - abar[t]) * eps
        x_tp = coef[k - 1, 0].item() * x_t + coef[k - 1, 1].item() * x0
        assert x_tp == pytest.approx(math.sqrt(abar[tp]) * x0 + math.sqrt(1 - abar[tp]) * eps, abs=1e-12)
    assert coef[0].tolist() == [0.0, 1.0]  # last step (t' = 0) returns x0_hat


def test_start_and_noising_coefficients():
    c0, c1 = schedule.start_coefficients(1000)
    abar_T = _closed_form_abar(1000)[-1]
    assert c0 == pytest.approx(math.sqrt(abar_T)) and c1 == pytest.approx(math.sqrt(1 - abar_T))
    t = torch.tensor([1, 500, 1000])
    sa, sb = schedule.noising_coefficients(1000, t, torch.float32)
    assert sa.shape == (3, 1) and sa.dtype == torch.float32
    np.testing.assert_allclose((sa ** 2 + sb ** 2).squeeze(1).numpy(), 1.0, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_noising_table_gathers_the_same_coefficients(dtype):
    """One gather of the cached ``[T + 1, 2]`` table gives noising_coefficients' values bit for bit."""
    t = torch.randint(1, 1001, (37,))
    table = schedule.noising_table_on(1000, "cpu", dtype)
    assert table.shape == (1001, 2) and table.dtype == dtype
    sa, sb = schedule.noising_coefficients(1000, t, dtype)
    assert torch.equal(table[t], torch.cat([sa, sb], 1))


def test_device_cached_builds_once_and_never_on_meta():
    builds = []

    def make(dev):
        builds.append(dev)
        return torch.zeros(3, device=dev)
    key = ("test-table", object())  # a key no other test shares
    first = schedule.device_cached(key, make, "cpu")
    assert schedule.device_cached(key, make, "cpu") is first and len(builds) == 1
    schedule.device_cached(key, make, "meta")
    schedule.device_cached(key, make, "meta")
    assert len(builds) == 3  # the cost models' meta recordings see every build


def test_a_table_first_built_in_inference_mode_serves_a_training_backward():
    """The cache builds outside inference mode: a table first needed by inference (here the DDIM
    coefficients of an unusual T, K) is saved for a later training step's backward without error."""
    with torch.inference_mode():
        schedule.ddim_coefficients_on(997, 3, "cpu", torch.float32)
    coef = schedule.ddim_coefficients_on(997, 3, "cpu", torch.float32)
    x = torch.randn(4, requires_grad=True)
    (coef[0, 0] * x).sum().backward()  # mul saves coef for x's gradient
    assert not coef.is_inference() and torch.equal(x.grad, coef[0, 0].expand(4))
