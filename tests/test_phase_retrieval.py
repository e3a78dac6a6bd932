"""Phase retrieval: the Fourier-magnitude operator, its ambiguities and their removal, the HIO+ER
baseline, photon-count noise, and the task through the job."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dip_lightning.errors import ConfigError
from dip_lightning.job.run import run
from dip_lightning.metrics.image import psnr
from dip_lightning.physics.alignment import circular_alignment
from dip_lightning.physics.cgls import cgls
from dip_lightning.physics.checks import adjoint_check
from dip_lightning.physics.hio import fourier_error, hybrid_input_output
from dip_lightning.physics.identity import Identity
from dip_lightning.physics.intensity_noise import IntensityPoissonNoise, sqrt_poisson_mse
from dip_lightning.physics.observation import make_observation
from dip_lightning.physics.phase_retrieval import PhaseRetrieval

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def blob(shape: tuple[int, int] = (16, 16), seed: int = 0, margin: int = 3) -> torch.Tensor:
    """A random non-negative image (1, 1, H, W) that is zero within ``margin`` of the border."""
    image = torch.zeros(1, 1, *shape, dtype=torch.float64)
    inner = image[..., margin : shape[0] - margin, margin : shape[1] - margin]
    inner.copy_(torch.rand(inner.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return image


def flipped(image: torch.Tensor) -> torch.Tensor:
    """x(-r) on the padded grid, moved back into the box by a shift of (H - 1, W - 1): the image
    rotated by 180 degrees within its box."""
    return image.flip(-2, -1)


# ------------------------------------------------------------------------------ the operator
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("oversampling", "shape"), [(2, (16, 16)), (3, (12, 20))])
def test_shapes_dtypes_and_magnitudes(dtype, oversampling, shape) -> None:
    operator = PhaseRetrieval(shape, oversampling=oversampling)
    x = torch.rand(2, 3, *shape, dtype=dtype)
    y = operator(x)
    assert y.shape == (2, 3, oversampling * shape[0], oversampling * shape[1])
    assert y.dtype == dtype and bool((y >= 0).all())
    # Orthonormal FFT: Parseval, and the zero frequency is the sum over sqrt(number of grid points).
    torch.testing.assert_close(y.square().sum(dim=(-2, -1)), x.square().sum(dim=(-2, -1)))
    total = x.sum(dim=(-2, -1)) / math.sqrt(oversampling**2 * shape[0] * shape[1])
    torch.testing.assert_close(y[..., 0, 0], total)
    assert operator.measurement_shape(shape, channels=3) == (3, *y.shape[-2:])


def test_the_operator_is_not_linear_and_refuses_linear_tools() -> None:
    operator = PhaseRetrieval((8, 8))
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    assert not operator.linear
    assert not torch.allclose(operator(-x), -operator(x))  # |F(-x)| = |F x|
    with pytest.raises(NotImplementedError, match="not linear"):
        operator.adjoint(operator(x))
    with pytest.raises(ValueError, match="not linear"):
        adjoint_check(operator, (8, 8))
    with pytest.raises(ValueError, match="not linear"):
        cgls(operator, operator(x))
    assert Identity().linear


def test_magnitudes_are_invariant_under_the_trivial_ambiguities() -> None:
    operator = PhaseRetrieval((16, 16))
    image = blob()
    y = operator(image)
    shifted = torch.roll(image, (2, -3), dims=(-2, -1))  # the margins keep it inside the box
    torch.testing.assert_close(operator(shifted), y)
    torch.testing.assert_close(operator(flipped(image)), y)
    grid = F.pad(image, (0, 16, 0, 16))  # on the padded grid: any circular shift, the flip x(-r)
    reflected = torch.roll(grid.flip(-2, -1), (1, 1), dims=(-2, -1))  # x((-r) mod 32)
    magnitude = torch.fft.fft2(grid, norm="ortho").abs()
    torch.testing.assert_close(torch.fft.fft2(reflected, norm="ortho").abs(), magnitude)
    torch.testing.assert_close(
        torch.fft.fft2(torch.roll(grid, (20, 7), dims=(-2, -1)), norm="ortho").abs(), magnitude
    )
    other = blob(seed=1)
    assert float((operator(other) - y).abs().max()) > 1e-2


def test_gradients_flow_through_the_modulus_also_at_zero() -> None:
    operator = PhaseRetrieval((8, 8))
    x = torch.zeros(1, 1, 8, 8, requires_grad=True)
    loss = (operator(x) - 1.0).square().mean()
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_measurement_image_is_the_centred_log_magnitude() -> None:
    operator = PhaseRetrieval((8, 8))
    y = operator(torch.rand(1, 1, 8, 8))
    shown = operator.measurement_image(y)
    assert shown.shape == y.shape
    assert float(shown[0, 0, 8, 8]) == pytest.approx(math.log1p(float(y[0, 0, 0, 0])))


# ------------------------------------------------------------------------------ alignment
@pytest.mark.parametrize("shift", [(0, 0), (2, -3), (-3, 1)])
@pytest.mark.parametrize("flip", [False, True])
def test_alignment_recovers_a_shifted_or_flipped_image_exactly(shift, flip) -> None:
    operator = PhaseRetrieval((16, 16))
    truth = blob()
    moved = flipped(truth) if flip else truth
    moved = torch.roll(moved, shift, dims=(-2, -1))
    assert not flip or not torch.equal(moved, torch.roll(truth, shift, dims=(-2, -1)))
    aligned = operator.align(moved, truth)
    assert torch.equal(aligned, truth)
    assert float(psnr(aligned, truth)) == math.inf


def test_alignment_is_per_image_shared_by_channels_and_moves_companion_maps() -> None:
    truth = torch.cat([blob(seed=2), blob(seed=3)], dim=1)  # (1, 2, 16, 16)
    first = torch.roll(truth, (1, 2), dims=(-2, -1))
    second = torch.roll(truth.flip(-2, -1), (-2, 0), dims=(-2, -1))
    estimates = torch.cat([first, second])
    move = circular_alignment(estimates, truth, (32, 32))
    torch.testing.assert_close(move(estimates), truth.expand(2, -1, -1, -1))
    variance = torch.rand_like(estimates)  # a map in the estimate's frame goes along
    grid = F.pad(variance[:1], (0, 16, 0, 16))  # moved on the padded grid: what leaves the box is cut
    expected = torch.roll(grid, (-1, -2), dims=(-2, -1))[..., :16, :16]
    assert torch.equal(move(variance)[:1], expected)


def test_default_alignment_is_the_identity() -> None:
    estimate, truth = torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8)
    assert Identity().align(estimate, truth) is estimate


def test_alignment_without_flip_keeps_the_orientation() -> None:
    truth = blob()
    reflected = truth.flip(-2, -1)
    aligned = circular_alignment(reflected, truth, (32, 32), flip=False)(reflected)
    assert not torch.equal(aligned, truth)


# ------------------------------------------------------------------------------ HIO + ER
def test_hio_recovers_a_simple_noiseless_image() -> None:
    truth = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    truth[..., 3:9, 4:12] = 1.0
    truth[..., 9:13, 6:9] = 0.5
    operator = PhaseRetrieval((16, 16), hio_iterations=300, er_iterations=100, restarts=2, seed=0)
    estimate = operator.pseudo_inverse(operator(truth))
    assert estimate.shape == truth.shape and estimate.dtype == truth.dtype
    assert bool((estimate >= 0).all())
    assert float(psnr(operator.align(estimate, truth).clamp(0, 1), truth)) > 40.0


def test_hio_is_seeded_and_cached_per_observation() -> None:
    y = PhaseRetrieval((16, 16))(blob())
    first = PhaseRetrieval((16, 16), hio_iterations=20, er_iterations=5, seed=3)
    same = PhaseRetrieval((16, 16), hio_iterations=20, er_iterations=5, seed=3)
    other = PhaseRetrieval((16, 16), hio_iterations=20, er_iterations=5, seed=4)
    result = first.pseudo_inverse(y)
    assert first.pseudo_inverse(y) is result  # the cached estimate
    assert torch.equal(same.pseudo_inverse(y), result)
    assert not torch.equal(other.pseudo_inverse(y), result)


def test_restarts_keep_the_estimate_of_least_fourier_error() -> None:
    y = PhaseRetrieval((16, 16))(blob(seed=5))

    def error(estimate: torch.Tensor) -> float:
        return float(fourier_error(F.pad(estimate, (0, 16, 0, 16)), y))

    settings = {"beta": 0.9, "hio_iterations": 30, "er_iterations": 10, "seed": 0}
    # The first of the restarts draws the same start as a single run of the seed.
    single = hybrid_input_output(y, (16, 16), restarts=1, **settings)
    best = hybrid_input_output(y, (16, 16), restarts=4, **settings)
    assert error(best) <= error(single) + 1e-9


# ------------------------------------------------------------------------------ bad settings
@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"oversampling": 1}, "operator.oversampling"),
        ({"oversampling": 2.5}, "operator.oversampling"),
        ({"oversampling": "2"}, "operator.oversampling"),
        ({"hio_beta": 0.0}, "operator.hio_beta"),
        ({"hio_beta": 1.5}, "operator.hio_beta"),
        ({"hio_beta": -0.1}, "operator.hio_beta"),
        ({"hio_iterations": -1}, "operator.hio_iterations"),
        ({"er_iterations": -5}, "operator.er_iterations"),
        ({"er_iterations": 2.5}, "operator.er_iterations"),
        ({"restarts": 0}, "operator.restarts"),
        ({"seed": -1}, "operator.seed"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict, setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        PhaseRetrieval((16, 16), **kwargs)
    assert info.value.setting == setting


def test_image_shape_is_checked_before_the_observation() -> None:
    operator = PhaseRetrieval((16, 24))
    with pytest.raises(ConfigError, match="16, 24"):
        make_observation(torch.rand(1, 16, 16), operator, IntensityPoissonNoise(), seed=0)


def test_bad_photon_count_is_refused() -> None:
    for photons in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError) as info:
            IntensityPoissonNoise(photons)
        assert info.value.setting == "noise.photons"


# ------------------------------------------------------------------------------ noise
def test_photon_noise_is_seeded_and_its_level_matches_expected_std() -> None:
    operator = PhaseRetrieval((16, 16))
    clean = operator(blob().float())
    noise = IntensityPoissonNoise(photons=1e4)
    first = noise(clean, torch.Generator().manual_seed(0))
    assert torch.equal(first, noise(clean, torch.Generator().manual_seed(0)))
    assert first.dtype == clean.dtype and bool((first >= 0).all())
    # The photons: the counts behind y sum to about `photons`.
    unit = noise.photon_intensity(clean)
    counts = first.double().square() / unit
    assert float(counts.sum()) == pytest.approx(1e4, rel=0.05)
    assert torch.allclose(counts, counts.round(), atol=1e-3)
    draws = torch.stack([noise(clean, torch.Generator().manual_seed(s)) for s in range(40)])
    rms = float((draws - clean).double().square().mean().sqrt())
    assert rms == pytest.approx(noise.expected_std(clean), rel=0.05)
    less = IntensityPoissonNoise(photons=1e6)(clean, torch.Generator().manual_seed(0))
    assert float((less - clean).norm()) < float((first - clean).norm())


def test_sqrt_poisson_mse_limits() -> None:
    rates = torch.tensor([0.0, 1e-6, 1e4])
    values = sqrt_poisson_mse(rates)
    assert float(values[0]) == 0.0
    # N = 0 (error rate) or, with probability rate, N = 1 (error about 1): 2 rate in all.
    assert float(values[1]) == pytest.approx(2e-6, rel=1e-2)
    assert float(values[2]) == pytest.approx(0.25, abs=1e-4)


def test_photon_noise_refuses_negative_or_complex_measurements() -> None:
    noise = IntensityPoissonNoise()
    with pytest.raises(ConfigError):
        noise(-torch.ones(1, 1, 4, 4), torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError):
        noise(torch.ones(1, 1, 4, 4, dtype=torch.complex64), torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------ the task
@pytest.mark.long
def test_task_runs_scores_after_alignment_and_reports_hio(small_config, tmp_path) -> None:
    cfg = small_config(
        "task=phase_retrieval",
        "data.size=32",
        "noise=intensity_poisson",
        "operator.hio_iterations=50",
        "operator.er_iterations=10",
        "trainer.max_steps=5",
        "num_threads=1",
    )
    run(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert math.isfinite(metrics["psnr"]) and math.isfinite(metrics["baseline_psnr"])
    # The saved reconstruction is the aligned one: its PSNR is the reported one.
    reconstruction = torch.from_numpy(np.load(tmp_path / "reconstruction.npy"))[None]
    truth = torch.from_numpy(np.load(tmp_path / "ground_truth.npy"))[None]
    assert float(psnr(reconstruction, truth)) == pytest.approx(metrics["psnr"], abs=1e-3)
    assert (tmp_path / "baseline.png").is_file() and (tmp_path / "observation.png").is_file()


def test_evaluation_and_per_step_psnr_score_the_aligned_estimate() -> None:
    from dip_lightning.methods.evaluation import aligned_prediction, evaluate_prediction
    from dip_lightning.methods.prediction import Prediction
    from dip_lightning.methods.trajectory import Trajectory
    from dip_lightning.physics.noise import NoNoise

    truth = blob().float()
    problem = make_observation(truth[0], PhaseRetrieval((16, 16)), NoNoise(), seed=0)
    estimate = torch.roll(flipped(truth), (1, -2), dims=(-2, -1))
    assert float(psnr(estimate, truth)) < 30  # unaligned, it is far off
    zeros = torch.zeros_like(estimate)
    metrics = evaluate_prediction(Prediction(estimate, zeros, zeros.clone()), problem)
    assert metrics["psnr"] == math.inf and metrics["ssim"] == pytest.approx(1.0)
    assert problem.aligned(estimate).equal(truth)
    samples = torch.cat([estimate, estimate + 0.01])
    moved = aligned_prediction(Prediction(estimate, zeros, zeros.clone(), samples=samples), problem)
    assert moved.mean.equal(truth) and moved.samples[0].equal(truth[0])
    identity = make_observation(truth[0], Identity(), NoNoise(), seed=0)
    same = Prediction(estimate, zeros, zeros.clone(), samples=samples)
    assert aligned_prediction(same, identity) is same  # nothing moved where A has no ambiguity
    record = Trajectory(problem, ema_decay=0.0).record(0, estimate)
    assert float(record.psnr) == math.inf
