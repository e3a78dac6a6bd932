"""Tests of the image, uncertainty and running metrics against analytic answers."""

from __future__ import annotations

import math

import pytest
import torch

from dip_lightning.errors import ConfigError
from dip_lightning.metrics.image import fast_psnr, psnr, ssim
from dip_lightning.metrics.running import ExponentialMovingAverage, RunningMoments
from dip_lightning.metrics.uncertainty import (
    calibration_curve,
    gaussian_nll,
    heteroscedastic_nll,
    predictive_moments,
    uce,
)

torch.set_num_threads(1)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# --------------------------------------------------------------------------- image metrics


def test_psnr_constant_error_is_20_db() -> None:
    target = torch.full((1, 1, 8, 8), 0.5)
    value = psnr(target + 0.1, target)
    assert value.shape == (1,)
    assert value.item() == pytest.approx(20.0, abs=1e-4)


def test_psnr_is_per_image() -> None:
    target = torch.zeros(2, 1, 6, 6)
    pred = target.clone()
    pred[0] += 0.1  # MSE 1e-2 -> 20 dB
    pred[1] += 0.01  # MSE 1e-4 -> 40 dB
    assert torch.allclose(psnr(pred, target), torch.tensor([20.0, 40.0]), atol=1e-3)


def test_psnr_respects_data_range_and_does_not_clamp() -> None:
    target = torch.zeros(1, 1, 4, 4)
    # Error 1 with data range 10: 10 log10(100 / 1) = 20 dB.
    assert psnr(target + 1.0, target, data_range=10.0).item() == pytest.approx(20.0, abs=1e-4)
    # pred far outside [0, 1]: an honest (negative) PSNR rather than a clamped one.
    assert psnr(target + 2.0, target).item() == pytest.approx(-10 * math.log10(4.0), abs=1e-4)


def test_fast_psnr_matches_psnr(gen: torch.Generator) -> None:
    target = torch.rand(1, 3, 9, 7, generator=gen)
    pred = target + 0.05 * torch.randn(target.shape, generator=gen)
    fast = fast_psnr(pred, target)
    assert fast.ndim == 0
    assert fast.item() == pytest.approx(psnr(pred, target).item(), rel=1e-5)
    # Batch: mean of per-image values; unbatched input: one image.
    batch_t = torch.rand(2, 1, 5, 5, generator=gen)
    batch_p = batch_t + torch.tensor([0.1, 0.01]).view(2, 1, 1, 1)
    assert fast_psnr(batch_p, batch_t).item() == pytest.approx(30.0, abs=1e-3)
    assert fast_psnr(pred[0], target[0]).item() == pytest.approx(fast.item(), rel=1e-6)
    assert fast_psnr(batch_p, batch_t, data_range=10.0).item() == pytest.approx(50.0, abs=1e-3)


def test_ssim_identical_is_one_and_drops_with_noise(gen: torch.Generator) -> None:
    clean = torch.rand(1, 1, 24, 24, generator=gen)
    assert ssim(clean, clean).item() == pytest.approx(1.0, abs=1e-5)
    scores = [
        ssim((clean + s * torch.randn(clean.shape, generator=gen)), clean).item() for s in (0.02, 0.1, 0.3)
    ]
    assert 1.0 > scores[0] > scores[1] > scores[2]


def test_ssim_is_per_image_and_handles_small_images(gen: torch.Generator) -> None:
    clean = torch.rand(2, 1, 16, 16, generator=gen)
    noisy = clean.clone()
    noisy[1] += 0.2 * torch.randn(noisy[1].shape, generator=gen)
    values = ssim(noisy, clean)
    assert values.shape == (2,)
    assert values[0].item() == pytest.approx(1.0, abs=1e-5)
    assert values[1].item() < 0.9
    for side in (1, 4, 7):  # smaller than the 11-px window
        tiny = torch.rand(1, 1, side, side + 3, generator=gen)
        assert ssim(tiny, tiny).item() == pytest.approx(1.0, abs=1e-5)
        assert ssim(0.5 * tiny, tiny).item() < 1.0


@pytest.mark.parametrize("metric", [psnr, ssim, fast_psnr])
def test_image_metrics_reject_mismatched_shapes(metric) -> None:
    with pytest.raises(ValueError, match=r"\(1, 1, 4, 4\).*\(1, 1, 4, 5\)"):
        metric(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_image_metrics_reject_non_4d_and_empty(metric) -> None:
    with pytest.raises(ValueError, match="B, C, H, W"):
        metric(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="empty"):
        metric(torch.zeros(0, 1, 4, 4), torch.zeros(0, 1, 4, 4))


@pytest.mark.parametrize("metric", [psnr, ssim, fast_psnr])
@pytest.mark.parametrize("data_range", [0.0, -1.0, math.nan])
def test_image_metrics_reject_bad_data_range(metric, data_range: float) -> None:
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ConfigError, match=r"metrics\.data_range"):
        metric(x, x, data_range=data_range)


# --------------------------------------------------------------------------- calibration


def test_uce_near_zero_when_calibrated(gen: torch.Generator) -> None:
    variance = torch.rand(200_000, generator=gen) * 0.09 + 0.01
    error = torch.randn(variance.shape, generator=gen) * variance.sqrt()
    value = uce(error.square(), variance)
    assert value.ndim == 0
    assert value.item() < 0.02 * variance.mean().item()
    # Doubling every error makes the squared error 4x the variance: UCE = 3 * mean variance.
    assert uce((2 * error).square(), variance).item() == pytest.approx(3 * variance.mean().item(), rel=0.03)


def test_uce_hand_built_two_bins() -> None:
    # Edges at 0, 0.5, 1. Bin 0: var {0, 0.2}, err {0.1, 0.3}; bin 1: var {0.8, 1.0}, err {0.5, 0.5}.
    variance = torch.tensor([0.0, 0.2, 0.8, 1.0])
    error_sq = torch.tensor([0.1, 0.3, 0.5, 0.5])
    # bin 0: |0.2 - 0.1| = 0.1, bin 1: |0.5 - 0.9| = 0.4; weights 1/2 each -> 0.25.
    assert uce(error_sq, variance, bins=2).item() == pytest.approx(0.25, abs=1e-7)
    curve = calibration_curve(error_sq, variance, bins=2)
    assert torch.allclose(curve["counts"], torch.tensor([2.0, 2.0], dtype=torch.float64))
    assert torch.allclose(curve["variance"], torch.tensor([0.1, 0.9], dtype=torch.float64))
    assert torch.allclose(curve["mse"], torch.tensor([0.2, 0.5], dtype=torch.float64))
    assert torch.allclose(curve["edges"], torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    assert curve["uce"].item() == pytest.approx(0.25, abs=1e-7)


def test_uce_single_bin_and_constant_variance() -> None:
    error_sq = torch.tensor([[0.1, 0.3], [0.2, 0.6]])
    variance = torch.tensor([[0.1, 0.2], [0.3, 0.4]])
    # One bin: |mean(err) - mean(var)| = |0.3 - 0.25|.
    assert uce(error_sq, variance, bins=1).item() == pytest.approx(0.05, abs=1e-7)
    constant = torch.full_like(variance, 0.2)
    assert uce(error_sq, constant, bins=15).item() == pytest.approx(0.1, abs=1e-7)
    curve = calibration_curve(error_sq, constant, bins=15)
    assert curve["counts"][0].item() == 4 and curve["counts"][1:].sum().item() == 0
    assert torch.isnan(curve["mse"][1:]).all()


def test_calibration_curve_empty_bins_are_nan_and_counts_sum() -> None:
    variance = torch.tensor([0.0, 0.01, 0.99, 1.0])
    curve = calibration_curve(variance, variance, bins=10)
    assert curve["counts"].sum().item() == 4
    assert curve["counts"][0].item() == 2 and curve["counts"][-1].item() == 2
    assert torch.isnan(curve["variance"][1:-1]).all()
    assert curve["uce"].item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("bins", [0, -3, 2.5, True])
def test_uce_rejects_bad_bins(bins) -> None:
    x = torch.rand(10)
    with pytest.raises(ConfigError, match=r"metrics\.uce_bins"):
        uce(x, x, bins=bins)
    with pytest.raises(ConfigError, match=r"metrics\.uce_bins"):
        calibration_curve(x, x, bins=bins)


def test_uce_rejects_mismatched_and_empty() -> None:
    with pytest.raises(ValueError, match=r"\(3,\).*\(4,\)"):
        uce(torch.rand(3), torch.rand(4))
    with pytest.raises(ValueError, match="empty"):
        uce(torch.zeros(0), torch.zeros(0))


# --------------------------------------------------------------------------- likelihoods


def test_gaussian_nll_matches_normal_log_prob(gen: torch.Generator) -> None:
    target = torch.randn(2, 1, 5, 5, generator=gen)
    mean = torch.randn(target.shape, generator=gen)
    variance = torch.rand(target.shape, generator=gen) + 0.1
    expected = -torch.distributions.Normal(mean, variance.sqrt()).log_prob(target).mean()
    assert gaussian_nll(target, mean, variance).item() == pytest.approx(expected.item(), rel=1e-5)


def test_gaussian_nll_floors_zero_variance() -> None:
    t = torch.zeros(4)
    value = gaussian_nll(t, t, torch.zeros(4), eps=1e-6)
    assert value.item() == pytest.approx(0.5 * math.log(2 * math.pi * 1e-6), rel=1e-5)


def test_heteroscedastic_nll_formula_and_clamp() -> None:
    target = torch.tensor([1.0, 2.0, 0.0])
    mean = torch.tensor([0.5, 2.0, 1.0])
    s = torch.tensor([0.0, 1.0, 50.0])
    # Third s clamped to 3: exp(3) * 1 - 3.
    expected = ((1.0 * 0.25 - 0.0) + (0.0 - 1.0) + (math.exp(3.0) - 3.0)) / 3
    assert heteroscedastic_nll(target, mean, s, clamp=3.0).item() == pytest.approx(expected, rel=1e-6)


def test_heteroscedastic_nll_is_twice_gaussian_nll_minus_constant(gen: torch.Generator) -> None:
    target = torch.randn(50, generator=gen)
    mean = torch.randn(50, generator=gen)
    s = torch.randn(50, generator=gen)
    het = heteroscedastic_nll(target, mean, s)
    gauss = gaussian_nll(target, mean, torch.exp(-s))
    assert het.item() == pytest.approx(2 * gauss.item() - math.log(2 * math.pi), rel=1e-5)


def test_likelihoods_reject_bad_inputs() -> None:
    a, b = torch.zeros(3), torch.zeros(4)
    with pytest.raises(ValueError, match=r"target and mean.*\(3,\).*\(4,\)"):
        gaussian_nll(a, b, a)
    with pytest.raises(ValueError, match="target and variance"):
        gaussian_nll(a, a, b)
    with pytest.raises(ValueError, match="target and log_precision"):
        heteroscedastic_nll(a, a, b)
    with pytest.raises(ConfigError, match=r"metrics\.nll_eps"):
        gaussian_nll(a, a, a, eps=0.0)
    with pytest.raises(ConfigError, match=r"metrics\.log_precision_clamp"):
        heteroscedastic_nll(a, a, a, clamp=-1.0)


def test_predictive_moments_match_manual(gen: torch.Generator) -> None:
    samples = torch.rand(6, 1, 3, 4, generator=gen)
    s = torch.randn(samples.shape, generator=gen)
    mean, epistemic, aleatoric = predictive_moments(samples, s)
    manual_mean = sum(samples[i] for i in range(6)) / 6
    manual_var = sum((samples[i] - manual_mean) ** 2 for i in range(6)) / 6
    manual_alea = sum(torch.exp(-s[i]) for i in range(6)) / 6
    assert torch.allclose(mean, manual_mean, atol=1e-6)
    assert torch.allclose(epistemic, manual_var, atol=1e-6)
    assert torch.allclose(aleatoric, manual_alea, atol=1e-5)
    _, _, none_alea = predictive_moments(samples, None)
    assert none_alea.shape == mean.shape and not none_alea.any()


def test_predictive_moments_single_sample_and_errors() -> None:
    mean, epi, _ = predictive_moments(torch.ones(1, 1, 2, 2))
    assert torch.equal(mean, torch.ones(1, 2, 2)) and not epi.any()
    with pytest.raises(ValueError, match="T >= 1"):
        predictive_moments(torch.zeros(0, 1, 2, 2))
    with pytest.raises(ValueError, match="T >= 1"):
        predictive_moments(torch.tensor(1.0))
    with pytest.raises(ValueError, match="samples and log_precisions"):
        predictive_moments(torch.zeros(2, 1, 2, 2), torch.zeros(3, 1, 2, 2))


# --------------------------------------------------------------------------- running statistics


def test_running_moments_matches_torch_with_chunks(gen: torch.Generator) -> None:
    data = torch.randn(37, 2, 3, generator=gen) * 3 + 1
    rm = RunningMoments()
    rm.update(data[0])
    for chunk in (data[1:5], data[5:6], data[6:6], data[6:30]):
        rm.update_batch(chunk)
    for x in data[30:]:
        rm.update(x)
    assert rm.count == 37
    assert rm.mean.dtype == torch.float64
    d64 = data.double()
    assert torch.allclose(rm.mean, d64.mean(0), atol=1e-12)
    assert torch.allclose(rm.variance, d64.var(0, unbiased=False), atol=1e-12)


def test_running_moments_single_sample_and_large_offset() -> None:
    rm = RunningMoments()
    rm.update(torch.tensor([2.0, -1.0]))
    assert torch.equal(rm.variance, torch.zeros(2, dtype=torch.float64))
    # A large common offset would ruin the naive sum-of-squares formula; Welford keeps it exact.
    rm = RunningMoments()
    rm.update_batch(torch.tensor([1e8 + 1.0, 1e8 + 2.0, 1e8 + 3.0], dtype=torch.float64).unsqueeze(1))
    assert rm.variance.item() == pytest.approx(2.0 / 3.0, rel=1e-9)


def test_running_moments_state_roundtrip(gen: torch.Generator) -> None:
    data = torch.randn(10, 4, generator=gen)
    full = RunningMoments()
    full.update_batch(data)
    first = RunningMoments()
    first.update_batch(data[:6])
    resumed = RunningMoments()
    resumed.load_state_dict(first.state_dict())
    resumed.update_batch(data[6:])
    assert resumed.count == 10
    assert torch.allclose(resumed.mean, full.mean) and torch.allclose(resumed.variance, full.variance)
    empty = RunningMoments()
    empty.load_state_dict(RunningMoments().state_dict())
    assert empty.count == 0


def test_running_moments_errors() -> None:
    rm = RunningMoments()
    with pytest.raises(RuntimeError, match="no samples"):
        _ = rm.mean
    with pytest.raises(RuntimeError, match="no samples"):
        _ = rm.variance
    with pytest.raises(ValueError, match="0-d"):
        rm.update_batch(torch.tensor(1.0))
    rm.update(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        rm.update(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="missing keys"):
        rm.load_state_dict({"count": 1})
    with pytest.raises(ValueError, match="inconsistent"):
        rm.load_state_dict({"count": 3, "mean": None, "m2": None})
    with pytest.raises(ValueError, match="m2 must have shape"):
        rm.load_state_dict({"count": 3, "mean": torch.zeros(2), "m2": torch.zeros(3)})


def test_ema_bias_correction_constant_input() -> None:
    ema = ExponentialMovingAverage(decay=0.9)
    for _ in range(5):
        ema.update(torch.full((2, 2), 3.0))
        assert torch.allclose(ema.value, torch.full((2, 2), 3.0))
    raw = ExponentialMovingAverage(decay=0.9, bias_correction=False)
    raw.update(torch.tensor(3.0))
    assert raw.value.item() == pytest.approx(0.3)  # shrunk toward zero without correction
    raw.update(3.0)
    assert raw.value.item() == pytest.approx(3.0 * (1 - 0.81))


def test_ema_values_and_state_roundtrip() -> None:
    ema = ExponentialMovingAverage(decay=0.5)
    ema.update(torch.tensor(2.0))
    ema.update(torch.tensor(4.0))
    # shadow = 0.5 * (0.5 * 2) + 0.5 * 4 = 2.5; corrected by 1 - 0.25 -> 10 / 3.
    assert ema.value.item() == pytest.approx(10.0 / 3.0)
    assert ema.steps == 2
    copy = ExponentialMovingAverage(decay=0.1)
    copy.load_state_dict(ema.state_dict())
    assert copy.decay == 0.5 and copy.value.item() == pytest.approx(10.0 / 3.0)
    zero = ExponentialMovingAverage(decay=0.0)
    zero.update(torch.tensor(7.0))
    assert zero.value.item() == 7.0


@pytest.mark.parametrize("decay", [-0.1, 1.0, 1.5, math.nan])
def test_ema_rejects_bad_decay(decay: float) -> None:
    with pytest.raises(ConfigError, match=r"method\.ema_decay"):
        ExponentialMovingAverage(decay=decay)


def test_ema_errors() -> None:
    ema = ExponentialMovingAverage()
    with pytest.raises(RuntimeError, match="no value"):
        _ = ema.value
    ema.update(torch.zeros(3))
    with pytest.raises(ValueError, match=r"\(3,\).*\(4,\)"):
        ema.update(torch.zeros(4))
    with pytest.raises(ValueError, match="missing keys"):
        ema.load_state_dict({"decay": 0.9})
    with pytest.raises(ValueError, match="inconsistent"):
        ema.load_state_dict({"decay": 0.9, "bias_correction": True, "steps": 2, "shadow": None})
    state = ema.state_dict() | {"decay": 2.0}
    with pytest.raises(ConfigError, match=r"method\.ema_decay"):
        ema.load_state_dict(state)
