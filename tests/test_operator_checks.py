"""Generic operator tools: the adjoint check on every configured operator, the CGLS pseudo-inverse,
and operators that hold trainable parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from dip_lightning.config import build, compose_config
from dip_lightning.errors import ConfigError
from dip_lightning.physics.base import ForwardOperator
from dip_lightning.physics.cgls import cgls
from dip_lightning.physics.checks import adjoint_check, adjoint_relative_error, real_inner
from dip_lightning.physics.downsampling import Downsampling
from dip_lightning.physics.fourier import MaskedFourier
from dip_lightning.physics.holdout import heldout_mse, hold_out, observed_elements
from dip_lightning.physics.identity import Identity
from dip_lightning.physics.noise import GaussianNoise
from dip_lightning.physics.observation import make_observation
from dip_lightning.physics.ray_transform import CACHE_ENV_VAR

ROOT = Path(__file__).resolve().parents[1]
OPERATOR_CONFIGS = sorted(path.stem for path in (ROOT / "conf" / "operator").glob("*.yaml"))


def dense(operator: ForwardOperator, shape: tuple[int, int]) -> Tensor:
    """The matrix of ``operator`` on (1, 1, H, W) images (real measurements), float64."""
    basis = torch.eye(shape[0] * shape[1], dtype=torch.float64).reshape(-1, 1, *shape)
    return operator(basis).reshape(basis.shape[0], -1).T


# --------------------------------------------------------------------------- adjoint check


def test_every_operator_config_is_checked() -> None:
    assert {"identity", "downsampling", "inpainting", "ray_transform", "fourier"} <= set(OPERATOR_CONFIGS)


@pytest.mark.parametrize("name", OPERATOR_CONFIGS)
def test_configured_operator_passes_the_adjoint_check(name: str, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "cache"))
    cfg = compose_config([f"operator={name}"], tmp_path)
    operator = build(cfg.operator)(image_shape=(32, 32))
    if not operator.linear:  # phase retrieval's magnitude: no adjoint, and the check says so
        with pytest.raises(ValueError, match="not linear"):
            adjoint_check(operator, (32, 32), channels=2, seed=1)
        return
    check = adjoint_check(operator, (32, 32), channels=2, seed=1)
    assert check.relative_error < 1e-10, check
    assert abs(check.forward_side) > 1e-3


def test_the_check_catches_a_wrong_adjoint() -> None:
    class Scaled(Identity):
        def adjoint(self, y: Tensor) -> Tensor:
            return 1.01 * y

    assert adjoint_relative_error(Scaled(), (8, 8)) == pytest.approx(0.01 / 1.01, rel=1e-6)

    class ConjugateForgotten(MaskedFourier):
        def adjoint(self, y: Tensor) -> Tensor:
            return torch.fft.ifft2(y * self.mask, norm="ortho").imag  # not the adjoint of Re<.,.>

    assert adjoint_relative_error(ConjugateForgotten((8, 8), acceleration=1.0), (8, 8)) > 0.1


def test_real_inner_product() -> None:
    u = torch.tensor([1 + 2j, 3 - 1j])
    v = torch.tensor([2 - 1j, 1j])
    assert real_inner(u, v) == pytest.approx((1 * 2 + 2 * -1) + (3 * 0 + -1 * 1))
    assert real_inner(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])) == 11.0


# --------------------------------------------------------------------------- CGLS


class Dense(ForwardOperator):
    """A matrix operator without a pseudo-inverse of its own: uses the generic CGLS one."""

    def __init__(self, matrix: Tensor, shape: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("matrix", matrix)
        self.image_shape = shape

    def forward(self, x: Tensor) -> Tensor:
        return (x.reshape(*x.shape[:2], -1) @ self.matrix.T.to(x.dtype))[..., None]

    def adjoint(self, y: Tensor) -> Tensor:
        return (y[..., 0] @ self.matrix.to(y.dtype)).reshape(*y.shape[:2], *self.image_shape)


def test_cgls_is_the_minimum_norm_least_squares_solution() -> None:
    operator = Downsampling(factor=2, kernel="gauss")
    shape = (8, 8)
    matrix = dense(operator, shape)
    y = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = (torch.linalg.pinv(matrix) @ y.reshape(-1)).reshape(1, 1, *shape)
    solution = cgls(operator, y, iterations=200, tolerance=1e-12)
    torch.testing.assert_close(solution, expected, rtol=1e-6, atol=1e-8)


def test_cgls_damping_is_tikhonov() -> None:
    generator = torch.Generator().manual_seed(1)
    matrix = torch.randn(12, 20, generator=generator, dtype=torch.float64)
    operator = Dense(matrix, (4, 5))
    y = torch.randn(1, 1, 12, 1, generator=generator, dtype=torch.float64)
    damping = 0.3
    normal = matrix.T @ matrix + damping * torch.eye(20, dtype=torch.float64)
    expected = torch.linalg.solve(normal, matrix.T @ y.reshape(-1)).reshape(1, 1, 4, 5)
    torch.testing.assert_close(cgls(operator, y, damping=damping, tolerance=1e-12), expected)


def test_generic_pseudo_inverse_uses_cgls_with_the_operator_settings() -> None:
    generator = torch.Generator().manual_seed(2)
    matrix = torch.randn(30, 20, generator=generator, dtype=torch.float64)
    operator = Dense(matrix, (4, 5))
    x = torch.randn(2, 3, 4, 5, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(operator.pseudo_inverse(operator(x)), x)  # overdetermined: exact
    operator.cgls_iterations = 1
    one_step = operator.pseudo_inverse(operator(x))
    assert float((one_step - x).abs().max()) > 1e-3
    torch.testing.assert_close(one_step, cgls(operator, operator(x), iterations=1))
    operator.cgls_iterations, operator.cgls_damping = 100, 5.0
    torch.testing.assert_close(operator.pseudo_inverse(operator(x)), cgls(operator, operator(x), damping=5.0))


def test_existing_operators_keep_their_closed_form_pseudo_inverses() -> None:
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    assert torch.equal(Identity().pseudo_inverse(x), x)
    downsampling = Downsampling(2)
    bicubic = torch.nn.functional.interpolate(
        downsampling(x), size=(16, 16), mode="bicubic", align_corners=False
    )
    assert torch.equal(downsampling.pseudo_inverse(downsampling(x)), bicubic)


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"iterations": -1}, "cgls.iterations"),
        ({"iterations": 2.5}, "cgls.iterations"),
        ({"tolerance": -1e-3}, "cgls.tolerance"),
        ({"damping": float("nan")}, "cgls.damping"),
    ],
)
def test_cgls_refuses_bad_settings(kwargs: dict, setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        cgls(Identity(), torch.ones(1, 1, 2, 2), **kwargs)
    assert info.value.setting == setting


def test_cgls_of_a_zero_measurement_is_zero() -> None:
    assert torch.equal(cgls(Identity(), torch.zeros(1, 1, 3, 3)), torch.zeros(1, 1, 3, 3))


# --------------------------------------------------------------------------- operators with parameters


class LearnedGain(ForwardOperator):
    """y = g * (m x): a mask with a trainable per-channel gain, as a fitted calibration would be."""

    measurement_in_image_space = True

    def __init__(self, image_shape: tuple[int, int]) -> None:
        super().__init__()
        mask = (torch.arange(image_shape[0] * image_shape[1]) % 3 != 0).float().reshape(1, 1, *image_shape)
        self.register_buffer("mask", mask)
        self.gain = nn.Parameter(torch.tensor(1.5))
        self.image_shape = image_shape

    def forward(self, x: Tensor) -> Tensor:
        return self.gain.to(x.dtype) * self.mask.to(x.dtype) * x

    def adjoint(self, y: Tensor) -> Tensor:
        return self.gain.to(y.dtype) * self.mask.to(y.dtype) * y

    def propagate_variance(self, variance: Tensor) -> Tensor:
        return self.gain.to(variance.dtype).square() * self.mask.to(variance.dtype) * variance


def test_physics_works_with_trainable_operator_parameters() -> None:
    operator = LearnedGain((12, 12))
    assert operator.measurement_shape((12, 12), 2) == (2, 12, 12)
    assert adjoint_relative_error(operator, (12, 12), 2) < 1e-12
    image = torch.rand(2, 12, 12, generator=torch.Generator().manual_seed(0))
    problem = make_observation(image, operator, GaussianNoise(0.05), seed=1)
    assert not problem.observation.requires_grad
    assert problem.noise_std == pytest.approx(0.05)
    observed = observed_elements(problem)
    assert not observed.requires_grad and torch.equal(observed, operator.mask.bool().expand(1, 2, 12, 12))
    split = hold_out(problem, 0.2, seed=1)
    score = heldout_mse(split, problem.ground_truth)
    assert score == pytest.approx(0.05**2, rel=0.35)
    assert operator.gain.grad is None  # nothing in physics back-propagated into the parameter
    pinv = operator.pseudo_inverse(problem.observation)  # the generic CGLS one, a constant
    assert not pinv.requires_grad
    moved = operator.to(torch.float64)
    assert moved.gain.dtype == torch.float64 and moved._device().type == "cpu"
    # The method fits the parameter through forward: gradients reach it there.
    (operator(problem.ground_truth.double()) - problem.observation.double()).square().sum().backward()
    assert operator.gain.grad is not None
