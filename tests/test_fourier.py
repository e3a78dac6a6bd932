"""The masked Fourier operator and complex measurements: mask, adjoint, pseudo-inverse, variance,
display, complex noise and the held-out split on k-space."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dip_lightning.errors import ConfigError
from dip_lightning.physics.cgls import cgls
from dip_lightning.physics.checks import adjoint_check, adjoint_relative_error
from dip_lightning.physics.fourier import MaskedFourier, cartesian_line_mask
from dip_lightning.physics.holdout import heldout_mask, heldout_mse, hold_out, observed_elements
from dip_lightning.physics.noise import GaussianNoise, NoNoise, PoissonNoise, SpeckleNoise
from dip_lightning.physics.observation import make_observation


def image(shape: tuple[int, int] = (32, 32), channels: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, channels, *shape, generator=torch.Generator().manual_seed(seed))


def mirrored_rows(height: int) -> np.ndarray:
    """Row index of frequency -f for the row of frequency f (FFT order)."""
    return (-np.arange(height)) % height


# --------------------------------------------------------------------------- mask


@pytest.mark.parametrize("height", [32, 33, 48])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_is_conjugate_symmetric_with_full_centre(height: int, seed: int) -> None:
    rows = cartesian_line_mask(height, 4.0, 0.1, np.random.default_rng(seed))
    assert rows.dtype == bool and rows.shape == (height,)
    np.testing.assert_array_equal(rows, rows[mirrored_rows(height)])
    radius = math.floor(0.1 * height / 2)
    frequencies = np.rint(np.fft.fftfreq(height) * height).astype(int)
    assert rows[np.abs(frequencies) <= radius].all()
    # Groups of one (centre, Nyquist) or two lines: at most one line from the target.
    assert abs(int(rows.sum()) - round(height / 4.0)) <= 1


def test_mask_follows_its_seed_and_acceleration() -> None:
    first = MaskedFourier((32, 32), seed=3)
    assert torch.equal(first.mask, MaskedFourier((32, 32), seed=3).mask)
    assert not torch.equal(first.mask, MaskedFourier((32, 32), seed=4).mask)
    assert first.mask.shape == (1, 1, 32, 32)
    assert torch.equal(first.mask, first.mask[..., :1].expand_as(first.mask))  # whole rows
    assert first.sampled_lines == 8 and first.sampled_fraction == pytest.approx(0.25)
    assert MaskedFourier((32, 32), acceleration=1.0).sampled_fraction == 1.0
    assert MaskedFourier((32, 32), acceleration=8.0, seed=3).sampled_lines == 4
    assert "sampled_lines=8" in repr(first)
    assert len(first.state_dict()) == 0  # the mask is rebuilt from its seed, not checkpointed


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"acceleration": 0.5}, "operator.acceleration"),
        ({"acceleration": float("inf")}, "operator.acceleration"),
        ({"acceleration": "fast"}, "operator.acceleration"),
        ({"center_fraction": -0.1}, "operator.center_fraction"),
        ({"center_fraction": 1.5}, "operator.center_fraction"),
        ({"center_fraction": 0.5, "acceleration": 8.0}, "operator.center_fraction"),
        ({"seed": -1}, "operator.seed"),
        ({"seed": 1.5}, "operator.seed"),
        ({"image_shape": None}, "operator.image_shape"),
        ({"image_shape": (1, 8)}, "operator.image_shape"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict, setting: str) -> None:
    arguments = {"image_shape": (32, 32), **kwargs}
    with pytest.raises(ConfigError) as info:
        MaskedFourier(**arguments)
    assert info.value.setting == setting


def test_image_shape_is_checked() -> None:
    operator = MaskedFourier((16, 24))
    operator.check_image_shape((16, 24))
    with pytest.raises(ConfigError, match="16, 24"):
        operator.check_image_shape((24, 16))
    with pytest.raises(ConfigError):
        make_observation(image((16, 16)), operator, NoNoise(), seed=0)


# --------------------------------------------------------------------------- linear algebra


@pytest.mark.parametrize(("shape", "channels"), [((32, 32), 1), ((16, 24), 3), ((15, 9), 2)])
def test_adjoint_check(shape: tuple[int, int], channels: int) -> None:
    operator = MaskedFourier(shape, acceleration=3.0, seed=1)
    check = adjoint_check(operator, shape, channels)
    assert check.relative_error < 1e-12
    assert abs(check.forward_side) > 0.1  # a real test, not 0 == 0
    y = operator(image(shape, channels))
    assert y.dtype == torch.complex64 and y.shape == (1, channels, *shape)
    assert operator.adjoint(y).dtype == torch.float32
    assert operator.measurement_shape(shape, channels) == (channels, *shape)


def test_forward_is_the_masked_orthonormal_fft() -> None:
    operator = MaskedFourier((16, 16), seed=2)
    x = image((16, 16)).double()
    expected = np.fft.fft2(x[0, 0].numpy(), norm="ortho") * operator.mask[0, 0].numpy()
    np.testing.assert_allclose(operator(x)[0, 0].numpy(), expected, atol=1e-12)
    full = MaskedFourier((16, 16), acceleration=1.0)
    assert float(full(x).abs().square().sum()) == pytest.approx(float(x.square().sum()))  # Parseval


def test_pseudo_inverse_is_the_zero_filled_inverse_fft_and_cgls_agrees() -> None:
    operator = MaskedFourier((32, 32), acceleration=4.0, seed=0)
    x = image((32, 32), channels=2).double()
    y = GaussianNoise(0.05)(operator(x), torch.Generator().manual_seed(1))
    closed = operator.pseudo_inverse(y)
    zero_filled = np.fft.ifft2(y.numpy() * operator.mask.numpy(), norm="ortho").real
    np.testing.assert_allclose(closed.numpy(), zero_filled, atol=1e-12)
    iterative = cgls(operator, y, iterations=50, tolerance=1e-12)
    torch.testing.assert_close(iterative, closed, rtol=0, atol=1e-10)
    # A partial isometry: the closed form reproduces the sampled data exactly (no noise left over).
    torch.testing.assert_close(operator(closed), operator(operator.adjoint(y)))
    assert float((operator(x) - operator(operator.pseudo_inverse(operator(x)))).abs().max()) < 1e-12


def test_propagate_variance_is_the_squared_magnitude_matrix() -> None:
    shape = (6, 5)
    operator = MaskedFourier(shape, acceleration=2.0, center_fraction=0.0, seed=0)
    basis = torch.eye(shape[0] * shape[1], dtype=torch.float64).reshape(-1, 1, *shape)
    columns = operator(basis).reshape(basis.shape[0], -1)  # row j: A e_j
    squared = columns.abs().square().T  # |A|^2, (measurements, pixels)
    variance = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = (squared @ variance.reshape(-1)).reshape(1, 1, *shape)
    torch.testing.assert_close(operator.propagate_variance(variance), expected)
    assert not operator.propagate_variance(variance).is_complex()


def test_propagate_variance_matches_monte_carlo() -> None:
    operator = MaskedFourier((8, 8), acceleration=2.0, seed=1)
    generator = torch.Generator().manual_seed(5)
    variance = 0.01 + 0.05 * torch.rand(1, 1, 8, 8, generator=generator, dtype=torch.float64)
    samples = torch.randn(20000, 1, 8, 8, generator=generator, dtype=torch.float64) * variance.sqrt()
    spread = operator(samples)
    empirical = (spread - spread.mean(dim=0)).abs().square().mean(dim=0, keepdim=True)
    predicted = operator.propagate_variance(variance)
    sampled = operator.mask.bool().expand_as(predicted)
    assert float(empirical[~sampled].max()) == 0.0
    ratio = empirical[sampled] / predicted[sampled]
    assert float((ratio - 1).abs().max()) < 0.05


# --------------------------------------------------------------------------- display


def test_measurement_image_is_log_magnitude_of_centred_k_space() -> None:
    operator = MaskedFourier((16, 16), seed=0)
    y = operator(torch.ones(1, 1, 16, 16))
    shown = operator.measurement_image(y)
    assert shown.dtype == torch.float32 and shown.shape == (1, 1, 16, 16)
    assert not shown.is_complex()
    # A constant image has all its energy at frequency 0, shown in the centre.
    assert float(shown[0, 0, 8, 8]) == pytest.approx(math.log1p(16.0))
    assert float(shown.sum()) == pytest.approx(math.log1p(16.0))


# --------------------------------------------------------------------------- complex noise


def test_complex_gaussian_noise_statistics() -> None:
    clean = torch.zeros(1, 1, 256, 256, dtype=torch.complex64)
    noisy = GaussianNoise(0.1)(clean, torch.Generator().manual_seed(0))
    assert noisy.dtype == torch.complex64 and noisy.shape == clean.shape
    for part in (noisy.real, noisy.imag):
        assert abs(float(part.mean())) < 3 * 0.1 / 256
        assert float(part.std()) == pytest.approx(0.1, rel=0.01)
    correlation = float((noisy.real * noisy.imag).mean()) / 0.01
    assert abs(correlation) < 0.02
    # expected_std is per real component: E|y - Ax|^2 = 2 s^2 per complex element.
    assert float(noisy.abs().square().mean()) == pytest.approx(2 * 0.01, rel=0.01)
    assert GaussianNoise(0.1).expected_std(clean) == 0.1


def test_complex_noise_is_seeded_and_keeps_precision() -> None:
    clean = MaskedFourier((16, 16))(image((16, 16)).double())
    noise = GaussianNoise(0.05, relative=True)
    first = noise(clean, torch.Generator().manual_seed(2))
    assert first.dtype == torch.complex128
    assert torch.equal(first, noise(clean, torch.Generator().manual_seed(2)))
    assert not torch.equal(first, noise(clean, torch.Generator().manual_seed(3)))
    assert noise.std(clean) == pytest.approx(0.05 * float(clean.abs().mean()))


def test_clip_is_ignored_for_complex_measurements() -> None:
    clean = torch.full((1, 1, 8, 8), 2.0 + 0.0j)
    with pytest.warns(UserWarning, match="noise.clip"):
        noisy = GaussianNoise(0.1, clip=True)(clean, torch.Generator().manual_seed(0))
    assert float(noisy.real.mean()) == pytest.approx(2.0, abs=0.1)


@pytest.mark.parametrize(("model", "name"), [(PoissonNoise(30.0), "poisson"), (SpeckleNoise(0.1), "speckle")])
def test_real_only_noise_models_refuse_complex_measurements(model, name: str) -> None:
    with pytest.raises(ConfigError, match="complex") as info:
        model(torch.ones(1, 1, 4, 4, dtype=torch.complex64), torch.Generator().manual_seed(0))
    assert info.value.setting == "noise" and info.value.value == name


# --------------------------------------------------------------------------- observation and hold-out


def test_observation_held_out_split_and_score_on_k_space() -> None:
    operator = MaskedFourier((32, 32), acceleration=4.0, seed=0)
    problem = make_observation(image((32, 32))[0], operator, GaussianNoise(0.1, clip=False), seed=3)
    assert problem.observation.is_complex()
    assert problem.noise_std == pytest.approx(0.1)
    observed = observed_elements(problem)
    assert observed.dtype == torch.bool and observed.shape == problem.observation.shape
    assert torch.equal(observed, operator.mask.bool())
    split = hold_out(problem, 0.25, seed=3)
    hidden = heldout_mask(split)
    assert int(hidden.sum()) == round(0.25 * int(observed.sum()))
    assert not bool((hidden & ~observed).any())  # never an unsampled element
    assert torch.equal(split.train_mask, hold_out(problem, 0.25, seed=3).train_mask)
    # At the truth the held-out residual is the noise: 2 sigma^2 per complex element.
    assert heldout_mse(split, problem.ground_truth) == pytest.approx(2 * 0.1**2, rel=0.15)
    zero = heldout_mse(split, torch.zeros_like(problem.ground_truth))
    assert zero > 10 * heldout_mse(split, problem.ground_truth)


def test_operator_moves_with_the_problem() -> None:
    operator = MaskedFourier((16, 16))
    problem = make_observation(image((16, 16))[0], operator, NoNoise(), seed=0)
    moved = problem.to(torch.device("cpu"))
    assert moved.operator.mask.device.type == "cpu"
    double = MaskedFourier((16, 16)).to(torch.float64)
    assert double(image((16, 16)).double()).dtype == torch.complex128


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    operator = MaskedFourier((32, 32), seed=1)
    x = image((32, 32), channels=2)
    on_gpu = MaskedFourier((32, 32), seed=1).cuda()
    torch.testing.assert_close(on_gpu(x.cuda()).cpu(), operator(x), rtol=1e-5, atol=1e-5)
    y = operator(x)
    torch.testing.assert_close(
        on_gpu.pseudo_inverse(y.cuda()).cpu(), operator.pseudo_inverse(y), rtol=1e-5, atol=1e-5
    )
    assert adjoint_relative_error(on_gpu, (32, 32), 2) < 1e-12
    cpu_problem = make_observation(x[0], operator, GaussianNoise(0.1), seed=4)
    gpu_problem = make_observation(x[0].cuda(), on_gpu, GaussianNoise(0.1), seed=4)
    torch.testing.assert_close(gpu_problem.observation.cpu(), cpu_problem.observation, rtol=1e-5, atol=1e-5)
