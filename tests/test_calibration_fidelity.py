"""Calibration numbers that match their definitions: the heteroscedastic NLL on partial
measurements, measurement-space variances of correlated samples, and the papers' UCE binnings."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dip_lightning.errors import ConfigError
from dip_lightning.job.run import build_method, build_problem
from dip_lightning.methods.evaluation import Binning, Calibration, evaluate_prediction
from dip_lightning.methods.mcdropout import MCDropoutDIP
from dip_lightning.methods.prediction import Prediction, measurement_variance
from dip_lightning.metrics.uncertainty import uce
from dip_lightning.physics import ray_transform as rt
from dip_lightning.physics.blind_blur import BlindBlur
from dip_lightning.physics.blur import Blur
from dip_lightning.physics.coils import CoilFourier
from dip_lightning.physics.downsampling import Downsampling
from dip_lightning.physics.fourier import MaskedFourier
from dip_lightning.physics.identity import Identity
from dip_lightning.physics.inpainting import Inpainting
from dip_lightning.physics.noise import GaussianNoise
from dip_lightning.physics.observation import make_observation
from dip_lightning.physics.phase_retrieval import PhaseRetrieval
from dip_lightning.physics.ray_transform import RayTransform
from tests.conftest import config_options


# ---------------------------------------------------------------- the NLL counts observed pixels
def test_nll_gradient_is_zero_at_every_missing_pixel(small_config) -> None:
    cfg = small_config("task=inpainting", "method=mcdropout", "noise=gaussian", "noise.sigma=0.1")
    problem = build_problem(cfg)
    method = build_method(cfg, problem)
    image, log_precision = method(method.net_input)
    log_precision = log_precision.detach().requires_grad_(True)
    method.data_fidelity(image, log_precision).backward()
    missing = problem.operator.mask.expand_as(log_precision) == 0
    assert int(missing.sum()) > 1000
    assert bool((log_precision.grad[missing] == 0).all())
    assert bool((log_precision.grad[~missing] != 0).any())


class FixedImageLearnedNoise(nn.Module):
    """A "network" whose image is the ground truth and whose log-precision is one learned number:
    training it by the NLL estimates the noise variance of the measurement and nothing else."""

    def __init__(self, truth: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("truth", truth)
        self.log_precision = nn.Parameter(torch.zeros(()))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        s = self.log_precision.expand(z.shape[0], 1, *self.truth.shape[-2:])
        return torch.cat([self.truth.expand(z.shape[0], -1, -1, -1), s], dim=1)


@pytest.mark.parametrize("kind", ["random", "blocks"])
def test_nll_learns_the_true_noise_variance_on_a_masked_measurement(kind: str) -> None:
    sigma = 0.1
    truth = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    operator = Inpainting((64, 64), kind=kind, missing_fraction=0.5, seed=3, block_size=8)
    problem = make_observation(truth, operator, GaussianNoise(sigma), seed=1)
    # A camera records nothing in the holes: noise only where the mask observes.
    problem.observation = operator(problem.observation)
    method = MCDropoutDIP(
        net=lambda **_: FixedImageLearnedNoise(truth),
        optimizer=lambda params: torch.optim.Adam(params, lr=0.05),
        weight_init_std=0.0,
    ).attach(problem)
    optimizer = torch.optim.Adam(method.net.parameters(), lr=0.05)
    for _ in range(400):
        optimizer.zero_grad()
        image, log_precision = method(method.net_input)
        method.data_fidelity(image, log_precision).backward()
        optimizer.step()
    _, log_precision = method.sample_outputs(1)
    learned = method.aleatoric_variance(log_precision)
    observed = operator.mask.expand_as(learned) > 0
    assert float(learned[observed].mean()) == pytest.approx(sigma**2, rel=0.3)


@pytest.mark.parametrize("task", ["super_resolution", "ct"])
def test_nll_is_refused_where_the_measurement_is_not_the_image_grid(small_config, task: str) -> None:
    cfg = small_config(f"task={task}", "method=mcdropout", "method.likelihood=nll")
    with pytest.raises(ConfigError, match=r"method\.likelihood.*method\.likelihood=mse"):
        build_method(cfg, build_problem(cfg))


# ------------------------------------------------------- measurement-space variance from samples
def blur_matrix(side: int, width: float) -> torch.Tensor:
    """A dense (side^2, side^2) Gaussian blur: white noise times it gives correlated samples."""
    radius = 3
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1) / width) ** 2)
    kernel = torch.outer(taps, taps)
    kernel = (kernel / kernel.sum())[None, None]
    basis = torch.eye(side * side).view(-1, 1, side, side)
    return F.conv2d(basis, kernel, padding=radius).view(side * side, -1).T.contiguous()


def operators(side: int, tmp_path) -> dict[str, nn.Module]:
    soft = torch.rand(side, side, generator=torch.Generator().manual_seed(2))
    soft[soft < 0.3] = 0.0
    return {
        "identity": Identity(),
        "inpainting": Inpainting.from_mask(soft),
        "downsampling": Downsampling(factor=2, image_shape=(side, side)),
        "ray_transform": RayTransform((side, side), num_angles=12, cache_dir=tmp_path),
        "ray_transform_fan": RayTransform((side, side), num_angles=12, beam="fan", cache_dir=tmp_path),
        "fourier": MaskedFourier((side, side), acceleration=2.0),
        "phase_retrieval": PhaseRetrieval((side, side)),
        "blur": Blur(kernel_size=5, image_shape=(side, side)),
        "blind_blur": BlindBlur(kernel_size=5, image_shape=(side, side)),
        "mri": MaskedFourier((side, side), acceleration=2.0, mask="random", lines="columns"),
        "mri_coils": CoilFourier((side, side), coils=3, phase=1.0, acceleration=2.0, mask="random"),
    }


# Every operator of conf/operator: operators() above must build each one.
@pytest.mark.parametrize("name", config_options("operator"))
def test_measurement_variance_of_correlated_samples_matches_a_sigma_a_transpose(
    name: str, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv(rt.CACHE_ENV_VAR, str(tmp_path))
    side, count = 16, 6000
    operator = operators(side, tmp_path)[name]
    if not operator.linear:
        pytest.skip("A Sigma A^T is the measurement covariance of a linear A only")
    root = blur_matrix(side, width=1.5)  # Sigma = G G^T
    white = torch.randn(count, side * side, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    samples = (white @ root.double().T).float().view(count, 1, side, side)
    estimate = measurement_variance(samples, operator).double().flatten()
    # diag(A G G^T A^T) is the row sum of (A G)^2; A applied to the columns of G.
    columns = root.T.contiguous().view(-1, 1, side, side)
    a_root = operator(columns).flatten(1).T  # (measurements, pixels), complex for k-space
    exact = a_root.abs().double().square().sum(dim=1)  # diag(A Sigma A^H)
    informative = exact > 1e-6 * exact.max()
    relative = (estimate[informative] - exact[informative]).abs() / exact[informative]
    # The sample variance of N Gaussian draws has relative std sqrt(2 / N) (1.8 % here).
    assert float(relative.mean()) < 2 * math.sqrt(2 / count)
    assert float(relative.max()) < 6 * math.sqrt(2 / count)
    if name in ("downsampling", "ray_transform"):
        # Pushing the per-pixel variance through A as if pixels were independent is far off.
        independent = operator.propagate_variance(samples.var(dim=0, keepdim=True)).double().flatten()
        assert float((exact[informative] / independent[informative]).median()) > 2


def test_observation_calibration_uses_the_samples_variance_in_measurement_space() -> None:
    operator = Downsampling(factor=2, image_shape=(16, 16))
    truth = torch.full((1, 1, 16, 16), 0.5)
    problem = make_observation(truth, operator, GaussianNoise(0.0), seed=0)
    samples = 0.5 + 0.1 * torch.randn(200, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    mean = samples.mean(dim=0, keepdim=True)
    prediction = Prediction(
        mean=mean,
        epistemic=samples.var(dim=0, unbiased=False, keepdim=True),
        aleatoric=torch.zeros_like(mean),
        measurement_epistemic=torch.full((1, 1, 8, 8), 0.25),
    )
    metrics = evaluate_prediction(prediction, problem, Calibration(bins=1))
    residual_sq = (operator(mean) - problem.observation).square().mean()
    assert metrics["uce_observation"] == pytest.approx(abs(float(residual_sq) - 0.25), rel=1e-5)


# ------------------------------------------------------------------------- the papers' binnings
def test_min_occupancy_leaves_out_sparse_bins_without_renormalising() -> None:
    variance = torch.cat([torch.full((97,), 0.1), torch.full((3,), 1.0)])
    error_sq = torch.cat([torch.full((97,), 0.2), torch.full((3,), 5.0)])
    everything = uce(error_sq, variance, bins=10)
    assert float(everything) == pytest.approx(0.97 * 0.1 + 0.03 * 4.0)
    # Toelle et al.'s 2 % keeps a bin of 3 %; a 5 % threshold drops it and keeps its weight out.
    assert float(uce(error_sq, variance, bins=10, min_occupancy=0.02)) == pytest.approx(float(everything))
    assert float(uce(error_sq, variance, bins=10, min_occupancy=0.05)) == pytest.approx(0.97 * 0.1)


def test_every_binning_of_the_config_is_reported(small_config) -> None:
    from dip_lightning.config import build

    calibration = build(small_config("calibration=toelle").calibration)
    assert calibration.primary == Binning(10, 0.02)
    assert calibration.extra() == {"laves": Binning(21, 0.0), "toelle": Binning(10, 0.02)}
    with pytest.raises(ConfigError, match="calibration.min_occupancy"):
        Calibration(min_occupancy=1.5).check()
    with pytest.raises(ConfigError, match="calibration.bins"):
        Calibration(also_report={"x": {"bins": 0}}).check()
