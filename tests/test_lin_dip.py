"""The linearised-Laplace DIP: Jacobian products, the predictive covariance against Bayesian linear
regression, Matheron samples, the marginal-likelihood noise estimate and bad settings."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dip_lightning.errors import ConfigError
from dip_lightning.job.run import build_method, build_problem, run
from dip_lightning.linearised.jacobian import DenseJacobian, LinearisedNetwork
from dip_lightning.linearised.marginal import ExactObservation, MLLSettings, optimise_hyperparameters
from dip_lightning.linearised.predictive import exact_covariance, matheron_samples, woodbury_preconditioner
from dip_lightning.linearised.prior import Block, BlockPrior, conv_blocks, distance_classes
from dip_lightning.models.skip import SkipNet


def tiny_linearisation(dtype: torch.dtype = torch.float32) -> tuple[LinearisedNetwork, BlockPrior]:
    torch.manual_seed(0)
    net = SkipNet(in_channels=4, channels_down=[4, 4], channels_up=[4, 4], channels_skip=[2, 2]).to(dtype)
    z = 0.1 * torch.randn(1, 4, 16, 16, dtype=dtype)
    blocks = conv_blocks(net)
    return LinearisedNetwork(net, z, blocks, lambda out: out), BlockPrior(blocks, 1.0, 0.5)


class MatrixMeasurement:
    """A dense real A behind the Measurement interface (forward, adjoint, size)."""

    def __init__(self, a: torch.Tensor) -> None:
        self.a = a.double()
        self.size = a.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double() @ self.a.T

    def adjoint(self, v: torch.Tensor) -> torch.Tensor:
        return v.double() @ self.a


def dense_prior_cov(prior: BlockPrior) -> torch.Tensor:
    with torch.no_grad():
        return prior.apply_cov(torch.eye(prior.num_params, dtype=torch.float64))


def test_blocks_follow_the_networks_scales_with_gp_priors_on_3x3_and_normal_on_1x1():
    net = SkipNet(in_channels=4, channels_down=[4, 4], channels_up=[4, 4], channels_skip=[2, 2])
    blocks = conv_blocks(net)
    gp = {b.name for b in blocks if b.is_gp}
    assert gp == {"body.down[3x3]", "body.up[3x3]", "body.inner.down[3x3]", "body.inner.up[3x3]"}
    # each encoder block holds both of its 3x3 convolutions
    assert next(b for b in blocks if b.name == "body.down[3x3]").weights == (
        "body.down.0.weight",
        "body.down.3.weight",
    )
    assert all(b.kernel == (1, 1) for b in blocks if not b.is_gp)
    assert blocks[-1].stop == sum(m.weight.numel() for m in net.modules() if type(m) is torch.nn.Conv2d)
    distances, masks = distance_classes((3, 3))
    assert len(distances) == 6 and torch.equal(masks.sum(0), torch.ones(9, 9, dtype=torch.float64))


def test_jacobian_products_match_jvp_and_finite_differences():
    linear, _ = tiny_linearisation(torch.float64)
    jac = linear.assemble()
    v = torch.randn(3, linear.num_params, dtype=torch.float64)
    torch.testing.assert_close(jac @ v.T, linear.jvp(v).T)
    u = torch.randn(2, linear.num_pixels, dtype=torch.float64)
    torch.testing.assert_close(u @ jac, linear.vjp(u))
    step = 1e-6
    with torch.no_grad():
        fd = (linear(linear.theta + step * v[0]) - linear(linear.theta - step * v[0])) / (2 * step)
    torch.testing.assert_close(jac @ v[0], fd, rtol=1e-5, atol=1e-7)


def toy_problem(noise_variance: float = 0.05):
    linear, prior = tiny_linearisation(torch.float64)
    jac = linear.assemble()
    generator = torch.Generator().manual_seed(3)
    a = torch.randn(60, linear.num_pixels, generator=generator, dtype=torch.float64) / 16
    return linear, prior, jac, a, torch.tensor(noise_variance, dtype=torch.float64)


def test_exact_predictive_covariance_is_bayesian_linear_regression_in_the_jacobian_features():
    _, prior, jac, a, noise = toy_problem()
    predictive = exact_covariance(jac, a @ jac, prior, noise)
    features = a @ jac
    precision = torch.linalg.inv(dense_prior_cov(prior)) + features.T @ features / noise
    expected = jac @ torch.linalg.solve(precision, jac.T)
    expected.diagonal().add_(1e-6)
    torch.testing.assert_close(predictive.image_cov, expected, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(
        predictive.measurement_var,
        (a @ (expected - 1e-6 * torch.eye(256, dtype=torch.float64)) @ a.T).diagonal(),
    )


def exact_preconditioner(prior, jac, a, noise):
    """Woodbury inverse of K from the SVD of A J (rank <= 60: exact)."""
    u, s, vt = torch.linalg.svd(a @ jac, full_matrices=False)
    with torch.no_grad():
        weight_cov = vt @ prior.apply_cov(vt).T
    return woodbury_preconditioner(u * s, weight_cov, float(noise))


def test_matheron_samples_converge_to_the_exact_covariance_like_one_over_sqrt_n():
    _, prior, jac, a, noise = toy_problem()
    exact = exact_covariance(jac, a @ jac, prior, noise).image_cov
    precondition = exact_preconditioner(prior, jac, a, noise)
    errors = []
    for n in (100, 1600):
        samples, _ = matheron_samples(
            DenseJacobian(jac),
            prior,
            MatrixMeasurement(a),
            float(noise),
            n,
            torch.Generator().manual_seed(n),
            batch_size=400,
            precondition=precondition,
            rtol=1e-8,
        )
        errors.append(float((samples.T @ samples / n - exact).norm() / exact.norm()))
    # 16 times the samples: the error shrinks about 4-fold (1/sqrt(N)); allow 2.5-fold
    assert errors[1] < errors[0] / 2.5, errors
    assert errors[1] < 0.15


def test_cg_gives_the_same_samples_with_and_without_an_exact_low_rank_preconditioner():
    _, prior, jac, a, noise = toy_problem()
    draws = {}
    for name, precondition in (("plain", None), ("woodbury", exact_preconditioner(prior, jac, a, noise))):
        draws[name] = matheron_samples(
            DenseJacobian(jac),
            prior,
            MatrixMeasurement(a),
            float(noise),
            8,
            torch.Generator().manual_seed(0),
            precondition=precondition,
            max_iter=200,
            rtol=1e-10,
        )
    assert max(draws["woodbury"][1]) <= 2 < min(draws["plain"][1])
    torch.testing.assert_close(draws["woodbury"][0], draws["plain"][0], rtol=1e-5, atol=1e-7)


def test_marginal_likelihood_recovers_a_known_noise_variance():
    generator = torch.Generator().manual_seed(0)
    m, p, true_noise, true_prior = 200, 30, 0.04, 0.5
    features = torch.randn(m, p, generator=generator, dtype=torch.float64)
    theta = true_prior**0.5 * torch.randn(p, generator=generator, dtype=torch.float64)
    y = features @ theta + true_noise**0.5 * torch.randn(m, generator=generator, dtype=torch.float64)
    # the Laplace point: the posterior mean under the true hyperparameters
    precision = torch.eye(p, dtype=torch.float64) / true_prior + features.T @ features / true_noise
    mode = torch.linalg.solve(precision, features.T @ y / true_noise)
    prior = BlockPrior([Block("weights", ("w",), (1, 1), 0, p)], variance=1.0)
    noise, curve = optimise_hyperparameters(
        prior,
        ExactObservation(prior, features),
        float((y - features @ mode).pow(2).sum()),
        prior.scatter(mode),
        MLLSettings(iterations=300, lr=0.05),
    )
    assert true_noise / 1.5 < float(noise) < true_noise * 1.5, float(noise)
    assert curve[-1] < curve[0]


# ---------------------------------------------------------------------------------- the method
CT_SMALL = ("task=ct", "method=lin_dip", "data=ellipses", "data.size=32", "operator.num_angles=8")


@pytest.mark.long
@pytest.mark.parametrize("path", ["exact", "sampling"])
def test_the_method_reports_the_fit_with_a_linearised_predictive_variance(small_config, tmp_path, path):
    cfg = small_config(
        *CT_SMALL,
        f"method.covariance={path}",
        "trainer.max_steps=20",
        "method.mll.iterations=20",
        "method.num_samples=16",
        "method.sampling.rank=30",
    )
    run(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["lin_dip_path"] == path
    assert metrics["lin_dip_noise_variance"] > 0
    for key in ("uce", "nll", "uce_observation"):
        assert math.isfinite(metrics[key]), key
    # The shared test log-likelihood reads the exact covariance or the Matheron samples.
    for key in ("test_loglik_p1", "test_loglik_p2", "test_loglik_p10"):
        assert math.isfinite(metrics[key]), key


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("method.hyperprior", "tv"),
        ("method.covariance", "dense"),
        ("method.mll.iterations", "-1"),
        ("method.mll.lr", "0"),
        ("method.predcp.num_samples", "0"),
        ("method.sampling.rank", "0"),
        ("method.sampling.products", "full"),
        ("method.exact_max_entries", "-5"),
        ("method.likelihood", "nll"),
    ],
)
def test_bad_settings_are_rejected_before_training(small_config, setting, value):
    cfg = small_config(*CT_SMALL, f"{setting}={value}")
    with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
        build_method(cfg, build_problem(cfg))


def test_a_full_rank_randomised_factorisation_reproduces_the_jacobian():
    linear, _ = tiny_linearisation(torch.float64)
    jac = linear.assemble()
    lowrank = linear.low_rank(rank=linear.num_pixels, oversampling=0)
    v = torch.randn(2, linear.num_params, dtype=torch.float64)
    torch.testing.assert_close(lowrank.jvp(v), v @ jac.T, rtol=1e-6, atol=1e-8)
    # a low rank keeps the leading singular values (one pass, no power iterations: a few per cent)
    top = torch.linalg.svdvals(jac)[:5]
    found = linear.low_rank(rank=5, oversampling=40).s
    assert float(found[0] / top[0]) == pytest.approx(1.0, abs=1e-2)
    torch.testing.assert_close(found, top, rtol=5e-2, atol=0)


def test_a_non_linear_operator_is_refused_before_training(small_config):
    cfg = small_config("task=phase_retrieval", "method=lin_dip", "model=skip_tiny")
    with pytest.raises(ConfigError, match="needs a linear operator") as info:
        build_method(cfg, build_problem(cfg))
    assert info.value.setting == "operator"
