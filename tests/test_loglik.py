"""The test log-likelihood of Antorán et al.: patches, shrinkage, the full covariance, settings."""

from __future__ import annotations

import math

import pytest
import torch

from dip_lightning.errors import ConfigError
from dip_lightning.metrics.loglik import (
    DenseCovariance,
    DiagonalCovariance,
    SampleCovariance,
    gaussian_loglik,
    image_noise_variance,
    isotropic_loglik,
    optimal_isotropic_variance,
    patch_index_groups,
    residual_noise_variance,
)


def random_covariance(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    factor = torch.randn(n, n, generator=g, dtype=torch.float64) / math.sqrt(n)
    return factor @ factor.T + 0.1 * torch.eye(n, dtype=torch.float64)


def mvn_logpdf(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> float:
    dist = torch.distributions.MultivariateNormal(mean.reshape(-1).double(), covariance_matrix=cov)
    return float(dist.log_prob(x.reshape(-1).double()))


@pytest.mark.parametrize(
    ("shape", "size"), [((6, 6), 2), ((7, 5), 2), ((10, 10), 3), ((4, 9), 4), ((5, 5), 1)]
)
def test_patches_cover_every_element_once_and_absorb_the_remainder(shape, size):
    groups = patch_index_groups(2, shape, size)
    flat = torch.cat([g.reshape(-1) for g in groups])
    assert torch.equal(flat.sort().values, torch.arange(2 * shape[0] * shape[1]))
    widths = {g.shape[1] for g in groups}
    # every patch is p x p except the last of a row or column, which is p to 2p - 1 wide
    assert all(size * size <= w <= (2 * size - 1) ** 2 for w in widths)
    rows, cols = shape[0] // size, shape[1] // size
    assert sum(g.shape[0] for g in groups) == 2 * rows * cols


def test_patch_is_a_spatial_square():
    (group,) = patch_index_groups(1, (4, 4), 4)
    assert group.tolist() == [list(range(16))]
    first = patch_index_groups(1, (4, 4), 2)[0]
    assert first[0].tolist() == [0, 1, 4, 5]


def test_whole_image_patch_equals_full_covariance():
    shape = (1, 1, 4, 6)
    cov = random_covariance(24)
    mean, truth = torch.zeros(shape), torch.randn(shape, generator=torch.Generator().manual_seed(1))
    provider = DenseCovariance(cov)
    full = gaussian_loglik(truth, mean, provider, None, jitter=1e-12)
    whole = gaussian_loglik(truth, mean, provider, 4, jitter=1e-12)  # 6 // 4 = 1: one 4x6 patch
    assert full == pytest.approx(whole, rel=1e-10)
    assert full == pytest.approx(mvn_logpdf(truth, mean, cov) / 24, rel=1e-8)


def test_patch_size_one_is_the_sum_of_independent_gaussians():
    shape = (1, 2, 5, 5)
    g = torch.Generator().manual_seed(2)
    cov = random_covariance(50, seed=3)
    mean, truth = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    got = gaussian_loglik(truth, mean, DenseCovariance(cov), 1, jitter=1e-6)
    var = torch.diagonal(cov) + 1e-6
    diff = (truth - mean).reshape(-1).double()
    expected = (-0.5 * (torch.log(2 * math.pi * var) + diff.square() / var)).mean()
    assert got == pytest.approx(float(expected), rel=1e-10)


def test_block_diagonal_patches_match_the_block_diagonal_density():
    shape = (1, 1, 4, 4)
    cov = random_covariance(16, seed=4)
    truth = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    mean = torch.zeros(shape)
    got = gaussian_loglik(truth, mean, DenseCovariance(cov), 2, jitter=1e-12)
    expected = 0.0
    for index in torch.cat(patch_index_groups(1, (4, 4), 2)):
        block = cov[index][:, index]
        expected += mvn_logpdf(truth.reshape(-1)[index], mean.reshape(-1)[index], block)
    assert got == pytest.approx(expected / 16, rel=1e-8)


def test_shrinkage_halves_the_off_diagonal_and_keeps_the_variances():
    samples = torch.randn(5, 1, 3, 3, generator=torch.Generator().manual_seed(6)).double()
    index = torch.arange(9).unsqueeze(0)
    raw = SampleCovariance(samples, shrink=False).block_covariance(index)[0]
    shrunk = SampleCovariance(samples, shrink=True).block_covariance(index)[0]
    centred = samples.reshape(5, -1) - samples.reshape(5, -1).mean(dim=0)
    assert torch.allclose(raw, centred.T @ centred / 5)
    assert torch.allclose(torch.diagonal(shrunk), torch.diagonal(raw))
    off = ~torch.eye(9, dtype=torch.bool)
    assert torch.allclose(shrunk[off], 0.5 * raw[off])
    about_zero = SampleCovariance(samples, shrink=False, centre=torch.zeros(1, 1, 3, 3))
    flat = samples.reshape(5, -1)
    assert torch.allclose(about_zero.block_covariance(index)[0], flat.T @ flat / 5)
    # 5 samples of 9 pixels: singular unshrunk, positive definite shrunk
    assert torch.linalg.matrix_rank(raw) < 9
    assert bool((torch.linalg.eigvalsh(shrunk) > 0).all())


def test_known_gaussian_samples_give_the_analytic_value():
    n, count = 16, 20000
    cov = random_covariance(n, seed=7)
    g = torch.Generator().manual_seed(8)
    chol = torch.linalg.cholesky(cov)
    samples = (torch.randn(count, n, generator=g, dtype=torch.float64) @ chol.T).reshape(count, 1, 4, 4)
    truth = (chol @ torch.randn(n, generator=g, dtype=torch.float64)).reshape(1, 1, 4, 4)
    mean = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    estimate = SampleCovariance(samples, shrink=False)
    for patch in (None, 2, 1):
        exact = gaussian_loglik(truth, mean, DenseCovariance(cov), patch, jitter=1e-9)
        sampled = gaussian_loglik(truth, mean, estimate, patch, jitter=1e-9)
        # the log-density of a 16-dim Gaussian from 20000 samples: error O(n^2 / count) per pixel
        assert sampled == pytest.approx(exact, abs=0.02)


def test_isotropic_score_and_its_optimal_variance():
    g = torch.Generator().manual_seed(9)
    truth, mean = torch.randn(1, 1, 8, 8, generator=g), torch.randn(1, 1, 8, 8, generator=g)
    best = optimal_isotropic_variance(truth, mean)
    assert best == pytest.approx(float((truth - mean).double().square().mean()))
    score = isotropic_loglik(truth, mean, best)
    assert score == pytest.approx(-0.5 * (math.log(2 * math.pi * best) + 1.0))
    assert score > isotropic_loglik(truth, mean, 2 * best)
    assert score > isotropic_loglik(truth, mean, 0.5 * best)
    dense = gaussian_loglik(truth, mean, DenseCovariance(torch.eye(64) * best), 1, jitter=1e-300)
    assert dense == pytest.approx(score, rel=1e-9)
    diagonal = DiagonalCovariance(torch.full((1, 1, 8, 8), best))
    for patch in (1, 4, None):
        assert gaussian_loglik(truth, mean, diagonal, patch, jitter=1e-300) == pytest.approx(score, rel=1e-9)


def test_image_noise_variance_of_the_identity_is_the_noise_variance():
    identity = torch.nn.Identity()
    assert image_noise_variance(identity, 0.25, 1, (4, 4)) == pytest.approx(0.25)
    # a gain of 2: pinv(A^T A) = I / 4
    scaled = image_noise_variance(lambda x: 2 * x, 1.0, 1, (4, 4))
    assert scaled == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="loglik.max_pixels"):
        image_noise_variance(identity, 1.0, 1, (8, 8), max_pixels=32)


def test_residual_noise_variance_is_the_mean_squared_residual():
    y = torch.ones(1, 1, 2, 2)
    x = torch.zeros(1, 1, 2, 2)
    assert residual_noise_variance(torch.nn.Identity(), x, y) == pytest.approx(1.0)
    observed = torch.tensor([[[[True, False], [False, False]]]])
    assert residual_noise_variance(torch.nn.Identity(), x, 3 * y, observed) == pytest.approx(9.0)


@pytest.mark.parametrize("size", [0, -1, 2.5, True, 9])
def test_bad_patch_sizes_name_the_setting(size):
    with pytest.raises(ConfigError, match="patch_size"):
        patch_index_groups(1, (8, 8), size)


def test_bad_jitter_and_samples_are_refused():
    provider = DenseCovariance(torch.eye(4))
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ConfigError, match="loglik.jitter"):
        gaussian_loglik(x, x, provider, 1, jitter=0.0)
    with pytest.raises(ValueError, match="T >= 2"):
        SampleCovariance(torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="not positive definite"):
        gaussian_loglik(x, x, DenseCovariance(-torch.eye(4)), None, jitter=1e-6)


# ------------------------------------------------------------------ in the evaluation of a method
def sampled_prediction(count: int = 6, shape=(1, 1, 16, 16), seed: int = 10):
    from dip_lightning.methods.prediction import Prediction

    g = torch.Generator().manual_seed(seed)
    samples = torch.randn(count, *shape[1:], generator=g)
    mean = samples.mean(dim=0, keepdim=True)
    epistemic = samples.var(dim=0, unbiased=False, keepdim=True)
    prediction = Prediction(mean, epistemic, torch.zeros_like(mean), epistemic.clone(), samples=samples)
    return prediction, torch.randn(shape, generator=g)


def test_evaluation_reports_each_patch_size_and_the_full_covariance_of_small_images():
    from dip_lightning.methods.evaluation import LogLikelihood
    from dip_lightning.metrics.uncertainty import gaussian_nll

    prediction, truth = sampled_prediction()
    settings = LogLikelihood(patch_sizes=[1, 4], full_max_pixels=256, jitter=1e-6)
    metrics = settings.evaluate(prediction, truth)
    assert set(metrics) == {"test_loglik_p1", "test_loglik_p4", "test_loglik_full"}
    nll = gaussian_nll(truth.double(), prediction.mean.double(), prediction.epistemic.double() + 1e-6)
    assert metrics["test_loglik_p1"] == pytest.approx(-float(nll), rel=1e-6)
    shrunk = SampleCovariance(prediction.samples, shrink=True)
    assert metrics["test_loglik_full"] == pytest.approx(gaussian_loglik(truth, prediction.mean, shrunk, None))
    assert "test_loglik_full" not in LogLikelihood(patch_sizes=[1], full_max_pixels=255).evaluate(
        prediction, truth
    )


def test_a_methods_own_covariance_is_preferred_to_its_samples():
    import dataclasses

    from dip_lightning.methods.evaluation import LogLikelihood

    prediction, truth = sampled_prediction()
    analytic = dataclasses.replace(prediction, covariance=DenseCovariance(torch.eye(256) * 4.0))
    metrics = LogLikelihood(patch_sizes=[2], full_max_pixels=0).evaluate(analytic, truth)
    assert metrics["test_loglik_p2"] == pytest.approx(isotropic_loglik(truth, prediction.mean, 4.0 + 1e-6))
    assert LogLikelihood().evaluate(dataclasses.replace(prediction, samples=None), truth) == {}


def test_evaluate_prediction_adds_the_columns_only_with_uncertainty():
    from dip_lightning.methods.evaluation import evaluate_prediction
    from dip_lightning.methods.prediction import Prediction
    from dip_lightning.physics.identity import Identity
    from dip_lightning.physics.noise import NoNoise
    from dip_lightning.physics.observation import make_observation

    prediction, truth = sampled_prediction()
    problem = make_observation(truth, Identity(), NoNoise(), seed=0)
    metrics = evaluate_prediction(prediction, problem)
    assert {"test_loglik_p1", "test_loglik_p2", "test_loglik_p10", "test_loglik_full"} <= set(metrics)
    point = Prediction(prediction.mean, torch.zeros_like(truth), torch.zeros_like(truth))
    assert not any(key.startswith("test_loglik") for key in evaluate_prediction(point, problem))


def test_replicates_pool_their_samples():
    from dip_lightning.methods.replicates import ensemble

    first, _ = sampled_prediction(seed=11)
    second, _ = sampled_prediction(seed=12)
    pooled = ensemble([first, second], torch.nn.Identity())
    assert pooled.samples.shape[0] == 12
    variance = pooled.samples.var(dim=0, unbiased=False, keepdim=True)
    assert torch.allclose(variance, pooled.epistemic, atol=1e-5)


@pytest.mark.parametrize(
    ("override", "setting"),
    [
        ({"patch_sizes": [0]}, "calibration.loglik.patch_sizes"),
        ({"patch_sizes": 2}, "calibration.loglik.patch_sizes"),
        ({"full_max_pixels": -1}, "calibration.loglik.full_max_pixels"),
        ({"jitter": 0.0}, "calibration.loglik.jitter"),
        ({"shrink": "yes"}, "calibration.loglik.shrink"),
    ],
)
def test_bad_loglik_settings_name_the_setting(override, setting):
    from dip_lightning.methods.evaluation import LogLikelihood

    with pytest.raises(ConfigError, match=setting):
        LogLikelihood(**override)


def test_a_patch_bigger_than_the_image_stops_the_run_before_training(small_config):
    from dip_lightning.job.run import build_method, build_problem

    cfg = small_config("task=denoising", "calibration.loglik.patch_sizes=[1,100]")
    with pytest.raises(ConfigError, match=r"calibration.loglik.patch_sizes=100.*at most 64"):
        build_method(cfg, build_problem(cfg))


def test_thinned_samples_stay_bounded_and_evenly_spread():
    from dip_lightning.metrics.running import ThinnedSamples

    kept = ThinnedSamples(4)
    for step in range(20):
        kept.update(torch.full((1, 2, 2), float(step)))
    values = kept.stacked()[:, 0, 0, 0].tolist()
    assert values == [0.0, 8.0, 16.0]  # stride 8 after two halvings
    restored = ThinnedSamples(4)
    restored.load_state_dict(kept.state_dict())
    for step in range(20, 33):
        kept.update(torch.full((1, 2, 2), float(step)))
        restored.update(torch.full((1, 2, 2), float(step)))
    assert torch.equal(kept.stacked(), restored.stacked())
    assert kept.count <= 4
    assert ThinnedSamples(0).stacked() is None
    with pytest.raises(ConfigError, match="method.kept_samples"):
        ThinnedSamples(-1)


@pytest.mark.long
def test_sgld_prediction_carries_its_thinned_samples(small_config):
    from tests.test_methods import fit

    cfg = small_config("method=sgld", "method.burn_in=1", "method.sample_every=1", "method.kept_samples=3")
    method = fit(cfg, 8)
    prediction = method.predict_distribution()
    assert method.samples.count > 3
    assert prediction.samples is not None and 2 <= prediction.samples.shape[0] <= 3
    assert prediction.samples.shape[1:] == prediction.mean.shape[1:]
    with pytest.raises(ConfigError, match="method.kept_samples"):
        fit(small_config("method=sgld", "method.kept_samples=-1"), 1)
