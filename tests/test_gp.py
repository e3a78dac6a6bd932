"""The Gaussian-process limit of the DIP network and exact GP regression with its kernel.

The kernel tests draw many wide random networks (512 hidden channels) on periodic grids and
compare their empirical output covariance with the analytic limit, at several offsets, within a
tolerance derived from the Monte Carlo standard error. The regression tests compare the FFT / CG
solutions with dense linear algebra on 8x8 images.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dip_lightning.errors import ConfigError
from dip_lightning.gp.architecture import skipnet_layers
from dip_lightning.gp.hyper import Spectral, fit_hyperparameters
from dip_lightning.gp.kernel import (
    Activation,
    Conv,
    Norm,
    Upsample,
    _filter_moment,
    _quadrature_moment,
    activation_moment,
    stationary_moments,
    upsampling_filter,
)
from dip_lightning.gp.prior import GPPrior
from dip_lightning.gp.regression import GPSettings, posterior
from dip_lightning.gp.solvers import Lanczos, conjugate_gradient
from dip_lightning.physics.downsampling import Downsampling
from dip_lightning.physics.identity import Identity
from dip_lightning.physics.inpainting import Inpainting

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OFFSETS = [(0, 0), (0, 1), (1, 1), (0, 2), (2, 3), (3, 0)]
HIDDEN = 512


# ------------------------------------------------------------------------------ wide networks
def _circular_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """3x3 periodic convolution with one set of weights per batch item: weight (B, O, C*9)."""
    batch, channels, height, width = x.shape
    shifts = [x.roll((dy, dx), dims=(2, 3)) for dy in (1, 0, -1) for dx in (1, 0, -1)]
    patches = torch.stack(shifts, 2).view(batch, channels * 9, height * width)
    return (torch.bmm(weight, patches) + bias[..., None]).view(batch, -1, height, width)


def _circular_upsample(x: torch.Tensor, mode: str) -> torch.Tensor:
    padded = F.pad(x, (2, 2, 2, 2), mode="circular")
    extra = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(padded, scale_factor=2, mode=mode, **extra)[..., 4:-4, 4:-4]


def _empirical_covariance(layers: list, act, upsample: str | None, size: int, seed: int) -> tuple:
    """Mean over random networks of the output's spatial products at OFFSETS, and its standard error.

    The networks are conv(3x3) - act - [upsample] - conv(3x3) with weights N(0, var / fan_in) and
    N(0, 1) input; every draw has new weights and a new input.
    """
    generator = torch.Generator().manual_seed(seed)
    in_ch, out_ch, draws, chunk = 16, 8, 96, 32
    first, last = layers[0], layers[-1]
    estimates = []
    for _ in range(draws // chunk):

        def normal(*shape: int, std: float) -> torch.Tensor:
            return std * torch.randn(*shape, generator=generator)

        z = normal(chunk, in_ch, size, size, std=1.0)
        w1 = normal(chunk, HIDDEN, in_ch * 9, std=math.sqrt(first.weight_var / (in_ch * 9)))
        hidden = act(_circular_conv(z, w1, normal(chunk, HIDDEN, std=math.sqrt(first.bias_var))))
        if upsample:
            hidden = _circular_upsample(hidden, upsample)
        w2 = normal(chunk, out_ch, HIDDEN * 9, std=math.sqrt(last.weight_var / (HIDDEN * 9)))
        out = _circular_conv(hidden, w2, normal(chunk, out_ch, std=math.sqrt(last.bias_var)))
        products = [(out * out.roll((-dy, -dx), dims=(2, 3))).mean((1, 2, 3)) for dy, dx in OFFSETS]
        estimates.append(torch.stack(products, 1))
    values = torch.cat(estimates).double()
    return values.mean(0), values.std(0) / math.sqrt(values.shape[0])


@pytest.mark.parametrize(
    ("name", "act", "upsample"),
    [
        ("erf", torch.erf, None),
        ("relu", F.relu, None),
        ("leaky_relu", lambda t: F.leaky_relu(t, 0.2), "bilinear"),
    ],
)
def test_analytic_covariance_matches_wide_random_networks(name, act, upsample) -> None:
    layers = [Conv(3, 1, 2.0, 0.5), Activation(name, 0.2)]
    layers += [Upsample(upsample)] if upsample else []
    layers += [Conv(3, 1, 1.5, 0.0)]
    size = 4 if upsample else 8
    _, cov = stationary_moments(layers, (size, size), input_std=1.0)
    analytic = torch.tensor([float(cov[d]) for d in OFFSETS], dtype=torch.float64)
    empirical, error = _empirical_covariance(layers, act, upsample, size, seed=7)
    # Monte Carlo error plus the O(1/width) and non-Gaussian-input bias of finite networks
    tolerance = 4.0 * error + 0.02 * analytic[0]
    assert ((empirical - analytic).abs() <= tolerance).all(), (analytic, empirical, error)
    if not upsample:
        # A rule convolving M with the autocorrelation of the 3x3 support, normalised by fan-in
        # (as if a filter's taps were equal), predicts spatial correlation; the networks show none.
        box = dict.fromkeys((-1, 0, 1), 1 / math.sqrt(3))
        white = torch.zeros(size, size, dtype=torch.float64)
        white[0, 0] = 1.0
        moment, _ = activation_moment(2.0 * _filter_moment(white, box) + 0.5, Activation(name))
        wrong = 1.5 * _filter_moment(moment, box)[0, 1]
        assert abs(float(empirical[1]) - float(wrong)) > 4.0 * float(error[1]) + 0.02 * float(analytic[0])


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
def test_upsampling_taps_match_torch(mode: str) -> None:
    impulse = torch.zeros(1, 1, 4, 16, dtype=torch.float64)
    impulse[..., 8] = 1.0
    extra = {} if mode == "nearest" else {"align_corners": False}
    row = F.interpolate(impulse, scale_factor=2, mode=mode, **extra)[0, 0, 2]
    expected = torch.zeros(32, dtype=torch.float64)
    for j, value in upsampling_filter(mode).items():
        expected[16 + j] += value
    assert torch.allclose(row, expected)


def test_closed_forms_match_quadrature_and_special_values() -> None:
    cov = torch.tensor([[2.0, 1.2], [0.3, -0.9]], dtype=torch.float64)
    closed, _ = activation_moment(cov, Activation("erf"))
    assert torch.allclose(closed, _quadrature_moment(torch.erf, cov, 64)[0], atol=1e-6)
    for slope in (0.0, 0.2):
        closed, mean = activation_moment(cov, Activation("leaky_relu", slope))
        numeric, _ = _quadrature_moment(lambda t, a=slope: F.leaky_relu(t, a), cov, 64)
        assert torch.allclose(closed, numeric, atol=3e-3)  # Gauss-Hermite converges slowly at the kink
        assert mean == pytest.approx((1 - slope) * math.sqrt(2.0 / (2 * math.pi)))
    # exact values: E[f(u)^2] = (1 + a^2)/2 var; uncorrelated: mean^2; anti-correlated: -a var
    special = torch.tensor([[2.0, 0.0], [-2.0, 2.0]], dtype=torch.float64)
    for slope in (0.0, 0.2):
        moment, mean = activation_moment(special, Activation("leaky_relu", slope))
        assert float(moment[0, 0]) == pytest.approx((1 + slope**2) / 2 * 2.0)
        assert float(moment[0, 1]) == pytest.approx(mean**2)
        assert float(moment[1, 0]) == pytest.approx(-slope * 2.0)


def test_skipnet_kernel_is_a_valid_smooth_covariance() -> None:
    prior = GPPrior.from_architecture(channels_down=[8, 8, 8], channels_up=[8, 8, 8], channels_skip=[4, 4, 4])
    cov = prior.covariance((32, 32))
    assert prior.mean == pytest.approx(0.5)
    assert float(torch.fft.fft2(cov).real.min()) > -1e-12 * float(cov.abs().max())  # positive definite
    assert torch.allclose(cov, cov.roll((-1, -1), (0, 1)).flip((0, 1)))  # C(d) = C(-d)
    assert float(cov[0, 0]) == pytest.approx(float(cov.max()))
    assert float(cov[0, 1]) > 0.5 * float(cov[0, 0])  # neighbours strongly correlated: a smooth prior
    offsets = prior.offsets(8, 8)
    assert offsets.shape == (15, 15) and float(offsets[7, 7]) == pytest.approx(float(cov[0, 0]))
    layers = skipnet_layers(channels_down=[8, 8], channels_up=[8, 8], channels_skip=[0, 0], norm="none")
    assert sum(isinstance(layer, Upsample) for layer in layers) == 2
    assert not any(isinstance(layer, Norm) for layer in layers)


def test_skipnet_kernel_matches_random_skipnets() -> None:
    """Our SkipNet itself (periodic convolutions, everything else as built) against its GP limit.

    What the limit leaves out shows up as a small bias: the phase-averaged upsampling before
    non-linearities and the clamped (not periodic) upsampling at the border make the networks'
    correlation fall off faster, by up to 5 % of the variance at these offsets.
    """
    from torch import nn

    from dip_lightning.models.skip import SkipNet

    def periodic_conv(
        in_ch: int, out_ch: int, kernel: int, stride: int, padding: str, bias: bool
    ) -> nn.Module:
        return nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, padding_mode="circular", bias=bias)

    settings = {"channels_down": [128, 128], "channels_up": [128, 128], "channels_skip": [4, 4]}
    cov = GPPrior.from_architecture(**settings).covariance((32, 32))
    offsets = [(0, 0), (0, 1), (0, 2), (0, 8), (3, 5)]
    estimates = []
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(11)
        for _ in range(40):
            net = SkipNet(in_channels=32, out_channels=16, conv=periodic_conv, **settings).train()
            out = net(0.1 * torch.rand(1, 32, 32, 32))[0] - 0.5
            estimates.append(torch.stack([(out * out.roll((-a, -b), (1, 2))).mean() for a, b in offsets]))
    values = torch.stack(estimates).double()
    error = values.std(0) / math.sqrt(values.shape[0])
    analytic = torch.tensor([float(cov[d]) for d in offsets], dtype=torch.float64)
    assert ((values.mean(0) - analytic).abs() <= 4 * error + 0.06 * analytic[0]).all(), (
        values.mean(0),
        analytic,
    )


# --------------------------------------------------------------------------------- regression
@pytest.fixture(scope="module")
def prior() -> GPPrior:
    return GPPrior.from_architecture(channels_down=[8, 8], channels_up=[8, 8], channels_skip=[2, 2])


def _dense_kernel(prior: GPPrior, grid: tuple[int, int], image: tuple[int, int]) -> torch.Tensor:
    cov = prior.covariance(grid)
    yy, xx = torch.meshgrid(torch.arange(image[0]), torch.arange(image[1]), indexing="ij")
    yy, xx = yy.reshape(-1), xx.reshape(-1)
    return cov[(yy[:, None] - yy[None]) % grid[0], (xx[:, None] - xx[None]) % grid[1]]


def _dense_posterior(kernel, matrix, y, mean, scale, noise_var):
    system = scale * matrix @ kernel @ matrix.T + noise_var * torch.eye(matrix.shape[0], dtype=torch.float64)
    post_mean = mean + scale * kernel @ matrix.T @ torch.linalg.solve(system, y - matrix.sum(1) * mean)
    post_cov = scale * kernel - scale**2 * kernel @ matrix.T @ torch.linalg.solve(system, matrix @ kernel)
    return post_mean, post_cov.diagonal()


def test_denoising_closed_form_matches_dense(prior: GPPrior) -> None:
    generator = torch.Generator().manual_seed(1)
    y = prior.sample((8, 8), 1, 2, generator) + 0.05 * torch.randn(
        1, 2, 8, 8, generator=generator, dtype=torch.float64
    )
    post = posterior(prior, Identity(), y, 0.05, GPSettings(prior_scale=2.0))
    assert post.variance_method == "closed_form"
    kernel = _dense_kernel(prior, (8, 8), (8, 8))
    for c in range(2):
        mean, var = _dense_posterior(
            kernel, torch.eye(64, dtype=torch.float64), y[0, c].reshape(-1), prior.mean, 2.0, 0.0025
        )
        assert torch.allclose(post.mean[0, c].reshape(-1), mean, atol=1e-8)
        assert torch.allclose(post.variance[0, c].reshape(-1), var, atol=1e-10)


@pytest.mark.parametrize("variance", ["exact", "monte_carlo"])
def test_inpainting_matches_dense(prior: GPPrior, variance: str) -> None:
    generator = torch.Generator().manual_seed(2)
    operator = Inpainting((8, 8), "random", 0.4, seed=3)
    truth = prior.sample((8, 8), 1, 1, generator).float()
    y = operator(truth + 0.05 * torch.randn(truth.shape, generator=generator))
    settings = GPSettings(prior_scale=2.0, variance=variance, num_samples=1500, cg_tol=1e-8)
    post = posterior(prior, operator, y, 0.05, settings)
    assert post.cg_converged and post.variance_method == variance
    observed = operator.mask.reshape(-1) > 0
    matrix = torch.eye(64, dtype=torch.float64)[observed]
    kernel = _dense_kernel(prior, (16, 16), (8, 8))  # the padded torus, restricted to the image
    mean, var = _dense_posterior(kernel, matrix, y.double().reshape(-1)[observed], prior.mean, 2.0, 0.0025)
    assert torch.allclose(post.mean.double().reshape(-1), mean, atol=1e-5)
    got = post.variance.double().reshape(-1)
    if variance == "exact":
        assert torch.allclose(got, var, rtol=1e-5)
    else:  # relative standard error sqrt(2 / 1500) = 3.7 %
        assert ((got - var).abs() / var).max() < 5 * math.sqrt(2 / 1500)
        assert post.samples.shape == (1500, 1, 8, 8)
    assert float(got[~observed].min()) > float(got[observed].max())  # holes are more uncertain


def test_downsampling_matches_dense(prior: GPPrior) -> None:
    operator = Downsampling(2, "box")
    truth = prior.sample((8, 8), 1, 1, torch.Generator().manual_seed(4))
    y = operator(truth)
    post = posterior(prior, operator, y, 0.02, GPSettings(prior_scale=1.0, cg_tol=1e-9), image_shape=(8, 8))
    matrix = operator(torch.eye(64, dtype=torch.float64).view(64, 1, 8, 8)).reshape(64, -1).T
    kernel = _dense_kernel(prior, (16, 16), (8, 8))
    mean, var = _dense_posterior(kernel, matrix, y.reshape(-1), prior.mean, 1.0, 0.0004)
    assert torch.allclose(post.mean.reshape(-1), mean, atol=1e-6)
    assert torch.allclose(post.variance.reshape(-1), var, rtol=1e-5)


def test_conjugate_gradient_converges() -> None:
    generator = torch.Generator().manual_seed(5)
    factor = torch.randn(3, 40, 40, generator=generator, dtype=torch.float64)
    matrices = factor @ factor.transpose(1, 2) + 0.5 * torch.eye(40, dtype=torch.float64)
    rhs = torch.randn(3, 40, generator=generator, dtype=torch.float64)
    rhs[2] = 0.0

    def apply(v: torch.Tensor) -> torch.Tensor:
        return (matrices @ v[..., None])[..., 0]

    exact = torch.linalg.solve(matrices, rhs)
    result = conjugate_gradient(apply, rhs, tol=1e-10, max_iter=500)
    assert result.converged and result.relative_residual < 1e-9
    assert torch.allclose(result.solution, exact, atol=1e-8)
    jacobi = matrices.diagonal(dim1=1, dim2=2)
    preconditioned = conjugate_gradient(
        apply, rhs, tol=1e-10, max_iter=500, precondition=lambda v: v / jacobi
    )
    assert preconditioned.converged and torch.allclose(preconditioned.solution, exact, atol=1e-8)
    assert not conjugate_gradient(apply, rhs, tol=1e-10, max_iter=2).converged


def test_lanczos_quadrature_gives_quadratic_forms_and_log_determinants() -> None:
    generator = torch.Generator().manual_seed(6)
    factor = torch.randn(30, 30, generator=generator, dtype=torch.float64)
    matrix = factor @ factor.T / 30 + 0.1 * torch.eye(30, dtype=torch.float64)
    start = torch.randn(1, 30, generator=generator, dtype=torch.float64)
    run = Lanczos(lambda v: v @ matrix, start)
    run.extend(40)  # stops by itself after 30 steps
    nodes, weights = run.quadrature(0)
    exact = float(start[0] @ torch.linalg.solve(matrix, start[0]))
    assert float((weights / nodes).sum()) == pytest.approx(exact, rel=1e-8)
    values, vectors = torch.linalg.eigh(matrix)
    log_matrix = vectors @ torch.diag(values.log()) @ vectors.T
    assert float((weights * nodes.log()).sum()) == pytest.approx(
        float(start[0] @ log_matrix @ start[0]), rel=1e-6
    )


def test_fitted_noise_level_and_scale() -> None:
    # no skip branch at the finest scale: that branch adds a white component to the kernel, which
    # the likelihood cannot tell from the noise
    prior = GPPrior.from_architecture(channels_down=[8, 8], channels_up=[8, 8], channels_skip=[0, 2])
    generator = torch.Generator().manual_seed(8)
    truth = prior.mean + math.sqrt(3.0) * (prior.sample((32, 32), 1, 1, generator) - prior.mean)
    y = truth + 0.1 * torch.randn(truth.shape, generator=generator, dtype=torch.float64)
    post = posterior(prior, Identity(), y)
    assert post.noise_std == pytest.approx(0.1, rel=0.1)
    assert post.prior_scale == pytest.approx(3.0, rel=0.6)
    # inpainting: Lanczos quadrature (no dense matrices) agrees with the dense eigen-decomposition
    operator = Inpainting((16, 16), "random", 0.3, seed=1)
    small = operator(y[..., :16, :16])
    dense = posterior(prior, operator, small, settings=GPSettings(variance="none"))
    lanczos = posterior(
        prior, operator, small, settings=GPSettings(variance="none", exact_max_pixels=0, probes=32)
    )
    assert lanczos.noise_std == pytest.approx(dense.noise_std, rel=0.15)
    assert lanczos.prior_scale == pytest.approx(dense.prior_scale, rel=0.3)
    assert dense.noise_std == pytest.approx(0.1, rel=0.35)


def test_hyperparameter_fit_recovers_known_spectrum() -> None:
    """A Gaussian vector with known eigenvalues: the fit finds the scale and noise that made it."""
    generator = torch.Generator().manual_seed(9)
    nodes = torch.logspace(-3, 1, 4000, dtype=torch.float64)
    data = (2.0 * nodes + 0.01).sqrt() * torch.randn(4000, generator=generator, dtype=torch.float64)
    spec = Spectral.from_tensors((nodes, data.square()), (nodes, torch.ones_like(nodes)), 4000)
    fit = fit_hyperparameters(spec, None, None)
    assert fit.scale == pytest.approx(2.0, rel=0.1) and fit.noise_var == pytest.approx(0.01, rel=0.15)
    assert fit_hyperparameters(spec, None, 0.01).scale == pytest.approx(2.0, rel=0.1)


# ------------------------------------------------------------------------------- bad settings
def _posterior_call(prior: GPPrior, **kwargs):
    def call() -> None:
        posterior(
            prior, kwargs.pop("operator", Identity()), kwargs.pop("y", torch.zeros(1, 1, 8, 8)), **kwargs
        )

    return call


@pytest.mark.parametrize(
    ("setting", "make"),
    [
        ("gp.layers[1].name", lambda: stationary_moments([Conv(), Activation("tanh")], (4, 4))),
        ("gp.layers[0].kernel", lambda: stationary_moments([Conv(kernel=2)], (4, 4))),
        ("gp.layers[0].stride", lambda: stationary_moments([Conv(stride=3)], (4, 4))),
        ("gp.layers[0].weight_var", lambda: stationary_moments([Conv(weight_var=-1.0)], (4, 4))),
        ("gp.layers[2]", lambda: stationary_moments([Conv(), Activation(), Activation()], (4, 4))),
        ("gp.layers", lambda: stationary_moments([Conv(stride=2), Conv(stride=2)], (6, 6))),
        ("gp.layers", lambda: GPPrior([Conv(stride=2)])),
        ("model.downsample", lambda: skipnet_layers(downsample="max")),
        ("model.activation", lambda: skipnet_layers(activation="gelu")),
        ("model.upsample_mode", lambda: skipnet_layers(upsample_mode="area")),
        ("model.channels_up", lambda: skipnet_layers(channels_down=[8, 8], channels_up=[8])),
        ("model.kernel_up", lambda: skipnet_layers(kernel_up=4)),
        ("model.widht", lambda: skipnet_layers(widht=3)),
        ("method.input.scale", lambda: GPPrior.from_architecture(input_scale=0.0)),
        ("method.pad_factor", lambda: GPSettings(pad_factor=0)),
        ("method.prior_scale", lambda: GPSettings(prior_scale=-1.0)),
        ("method.variance", lambda: GPSettings(variance="sometimes")),
        ("method.num_samples", lambda: GPSettings(num_samples=1)),
        ("method.cg_tol", lambda: GPSettings(cg_tol=0.0)),
        ("method.cg_max_iter", lambda: GPSettings(cg_max_iter=0)),
        ("method.probes", lambda: GPSettings(probes=0)),
    ],
)
def test_bad_settings_raise_config_error(setting: str, make) -> None:
    with pytest.raises(ConfigError) as info:
        make()
    assert info.value.setting == setting


def test_method_config_lists_the_regression_settings() -> None:
    """conf/method/gp.yaml carries every GPSettings field with its default (the seed is the run's)."""
    import dataclasses
    from pathlib import Path

    import yaml

    values = yaml.safe_load((Path(__file__).parents[1] / "conf" / "method" / "gp.yaml").read_text())
    assert values["noise_std"] is None
    fields = {f.name: f.default for f in dataclasses.fields(GPSettings) if f.name != "seed"}
    assert {name: values[name] for name in fields} == fields
    GPSettings(**fields)


def test_bad_posterior_inputs_raise_config_error(prior: GPPrior) -> None:
    cases = {
        "method.noise_std": _posterior_call(prior, noise_std=-0.1),
        "observation": _posterior_call(prior, y=torch.zeros(2, 1, 8, 8)),
        "model.channels_down": _posterior_call(prior, y=torch.zeros(1, 1, 6, 6)),
        "operator.image_shape": _posterior_call(prior, operator=Downsampling(2), y=torch.zeros(1, 1, 4, 4)),
    }
    for setting, call in cases.items():
        with pytest.raises(ConfigError) as info:
            call()
        assert info.value.setting == setting
    with pytest.raises(ConfigError, match="finite"):
        _posterior_call(prior, y=torch.full((1, 1, 8, 8), float("nan")))()
