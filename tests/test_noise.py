"""Noise models: statistics, reproducibility by seed, settings validation."""

from __future__ import annotations

import math

import pytest
import torch

from dip_lightning.errors import ConfigError
from dip_lightning.physics.noise import GaussianNoise, NoiseModel, NoNoise, PoissonNoise, SpeckleNoise


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_image(height: int = 64, width: int = 64, channels: int = 1) -> torch.Tensor:
    """A positive test image in (0, 1) with structure (so relative/multiplicative noise matters)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    image = 0.2 + 0.6 * (0.5 + 0.5 * torch.sin(6 * xx) * torch.cos(4 * yy))
    return image.expand(1, channels, height, width).clone()


ALL_MODELS = [
    NoNoise(),
    GaussianNoise(0.1),
    GaussianNoise(0.05, relative=True),
    GaussianNoise(0.2, clip=True),
    PoissonNoise(30.0),
    SpeckleNoise(0.1),
]


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.name)
def test_shape_dtype_device_and_name(model: NoiseModel) -> None:
    for dtype in (torch.float32, torch.float64):
        clean = smooth_image(32, 48, channels=3).to(dtype)
        noisy = model(clean, gen())
        assert noisy.shape == clean.shape
        assert noisy.dtype == dtype
        assert noisy.device == clean.device
        assert torch.isfinite(noisy).all()
    assert isinstance(model.name, str) and model.name
    assert model.name in repr(model)


@pytest.mark.parametrize("model", [m for m in ALL_MODELS if not isinstance(m, NoNoise)], ids=lambda m: m.name)
def test_reproducible_by_seed(model: NoiseModel) -> None:
    clean = smooth_image(32, 32)
    first = model(clean, gen(7))
    again = model(clean, gen(7))
    other = model(clean, gen(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.name)
def test_expected_std_matches_empirical_rms(model: NoiseModel) -> None:
    """expected_std is the rms of y - A x that the discrepancy principle relies on."""
    clean = smooth_image(128, 128)
    residual = model(clean, gen(3)) - clean
    rms = float(residual.double().square().mean().sqrt())
    expected = model.expected_std(clean)
    assert expected is not None
    if isinstance(model, GaussianNoise) and model.clip:
        assert rms <= expected * 1.05  # clipping can only shrink the residual
    else:
        assert rms == pytest.approx(expected, rel=0.05, abs=1e-12)


def test_no_noise_is_an_independent_copy() -> None:
    clean = smooth_image(8, 8)
    noisy = NoNoise()(clean, gen())
    assert torch.equal(noisy, clean)
    noisy += 1
    assert not torch.equal(noisy, clean)
    assert NoNoise().expected_std(clean) == 0.0


def test_gaussian_std_within_five_percent() -> None:
    clean = torch.full((1, 1, 64, 64), 0.5)
    for sigma in (0.01, 0.1, 0.3):
        noise = GaussianNoise(sigma)(clean, gen(1)) - clean
        assert float(noise.std()) == pytest.approx(sigma, rel=0.05)
        assert abs(float(noise.mean())) < 4 * sigma / 64
        assert GaussianNoise(sigma).expected_std(clean) == sigma


def test_gaussian_zero_sigma_is_noiseless() -> None:
    clean = smooth_image(16, 16)
    assert torch.equal(GaussianNoise(0.0)(clean, gen()), clean)


def test_gaussian_relative_scales_with_mean_absolute_value() -> None:
    clean = smooth_image(64, 64) * 3.0 - 0.5  # some negative values: |x| matters
    model = GaussianNoise(0.05, relative=True)
    expected = 0.05 * float(clean.abs().mean())
    assert model.expected_std(clean) == pytest.approx(expected)
    noise = model(clean, gen(2)) - clean
    assert float(noise.std()) == pytest.approx(expected, rel=0.05)
    # Doubling the signal doubles the noise level.
    assert model.expected_std(2 * clean) == pytest.approx(2 * expected)


def test_gaussian_clip_keeps_unit_range() -> None:
    clean = smooth_image(64, 64)
    noisy = GaussianNoise(0.5, clip=True)(clean, gen())
    assert float(noisy.min()) >= 0.0 and float(noisy.max()) <= 1.0
    assert float(noisy.min()) == 0.0 and float(noisy.max()) == 1.0  # sigma 0.5 reaches both ends


def test_poisson_preserves_mean_and_has_counting_variance() -> None:
    peak = 30.0
    clean = torch.full((1, 1, 128, 128), 0.4)
    noisy = PoissonNoise(peak)(clean, gen(4))
    assert float(noisy.mean()) == pytest.approx(0.4, abs=0.01)
    assert float(noisy.var()) == pytest.approx(0.4 / peak, rel=0.05)
    # Values are whole photon counts divided by the peak.
    counts = noisy * peak
    assert torch.allclose(counts, counts.round(), atol=1e-4)
    assert PoissonNoise(peak).expected_std(clean) == pytest.approx(math.sqrt(0.4 / peak))


def test_poisson_mean_preserved_on_structured_image() -> None:
    clean = smooth_image(64, 64)
    noisy = PoissonNoise(50.0)(clean, gen(5))
    assert float(noisy.mean()) == pytest.approx(float(clean.mean()), abs=0.01)


def test_poisson_rejects_negative_measurement() -> None:
    clean = smooth_image(8, 8) - 0.5
    with pytest.raises(ConfigError, match="non-negative") as info:
        PoissonNoise()(clean, gen())
    assert "minimum" in str(info.value)


def test_speckle_log_ratio_is_gaussian_with_sigma() -> None:
    clean = smooth_image(64, 64)
    noisy = SpeckleNoise(0.2)(clean, gen(6))
    log_ratio = torch.log(noisy / clean)
    assert float(log_ratio.std()) == pytest.approx(0.2, rel=0.05)
    assert abs(float(log_ratio.mean())) < 0.01
    assert (noisy > 0).all()  # multiplicative noise keeps the sign


@pytest.mark.parametrize(
    ("factory", "setting"),
    [
        (lambda: GaussianNoise(-0.1), "noise.sigma"),
        (lambda: GaussianNoise(float("nan")), "noise.sigma"),
        (lambda: GaussianNoise(float("inf")), "noise.sigma"),
        (lambda: SpeckleNoise(-1.0), "noise.sigma"),
        (lambda: PoissonNoise(0.0), "noise.peak"),
        (lambda: PoissonNoise(-5.0), "noise.peak"),
    ],
)
def test_invalid_settings_name_the_setting(factory, setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        factory()
    assert info.value.setting == setting
    assert setting in str(info.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_generator_gives_the_same_noise_on_gpu() -> None:
    clean = smooth_image(32, 32)
    for model in ALL_MODELS:
        on_cpu = model(clean, gen(9))
        on_gpu = model(clean.cuda(), gen(9))
        assert on_gpu.device.type == "cuda"
        assert torch.allclose(on_gpu.cpu(), on_cpu, atol=1e-6), model.name
