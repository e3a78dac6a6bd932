"""Property-based checks of the forward operators over random shapes and parameters.

For every combination either the constructor refuses it with a ConfigError (the documented
validation error, naming an ``operator.*`` setting) or the operator satisfies the adjoint identity
<A x, y> = <x, A^T y> and maps images to measurements of a consistent shape. Any other exception
is a bug.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dip_lightning.errors import ConfigError
from dip_lightning.physics.base import ForwardOperator
from dip_lightning.physics.checks import adjoint_relative_error
from dip_lightning.physics.downsampling import Downsampling
from dip_lightning.physics.fourier import MaskedFourier
from dip_lightning.physics.identity import Identity
from dip_lightning.physics.inpainting import Inpainting
from dip_lightning.physics.ray_transform import RayTransform

PROPERTY_SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
RELATIVE_TOLERANCE = 1e-4

sizes = st.integers(min_value=-2, max_value=40)
channels = st.integers(min_value=1, max_value=3)
seeds = st.integers(min_value=0, max_value=2**16)


def build_or_refuse(make: Callable[[], ForwardOperator]) -> ForwardOperator | None:
    """The operator, or None when its settings are refused with the documented error."""
    try:
        operator = make()
    except ConfigError as error:
        assert error.setting.startswith("operator."), error
        assert str(error).startswith(f"Invalid setting {error.setting}=")
        event(f"refused: {error.setting}")
        return None
    event("built")
    return operator


def assert_adjoint_identity(
    operator: ForwardOperator, shape: tuple[int, int], num_channels: int, seed: int
) -> None:
    """<A x, y> == <x, A^T y> to 1e-4 of ||A x|| ||y|| (float32 operators, float64 sums)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, num_channels, *shape, generator=generator)
    forward = operator(x)
    assert forward.shape[:2] == x.shape[:2] and torch.isfinite(forward).all()
    y = torch.randn(forward.shape, generator=generator, dtype=forward.dtype)
    back = operator.adjoint(y)
    assert back.shape == x.shape
    lhs = (forward.double() * y.double()).sum()
    rhs = (x.double() * back.double()).sum()
    scale = forward.double().norm() * y.double().norm() + 1e-12
    assert abs(float(lhs - rhs)) <= RELATIVE_TOLERANCE * float(scale), (float(lhs), float(rhs))


@PROPERTY_SETTINGS
@given(height=st.integers(1, 40), width=st.integers(1, 40), num_channels=channels, seed=seeds)
def test_identity(height, width, num_channels, seed):
    assert_adjoint_identity(Identity(image_shape=(height, width)), (height, width), num_channels, seed)


@PROPERTY_SETTINGS
@given(
    data=st.data(),
    factor=st.sampled_from([2, 4, 8]),
    kernel=st.sampled_from(["lanczos2", "lanczos3", "box", "gauss"]),
    num_channels=channels,
    seed=seeds,
)
def test_downsampling_adjoint(data, factor, kernel, num_channels, seed):
    height, width = (data.draw(st.integers(1, 48 // factor)) * factor for _ in range(2))
    operator = Downsampling(factor=factor, kernel=kernel, image_shape=(height, width))
    assert_adjoint_identity(operator, (height, width), num_channels, seed)
    assert operator(torch.zeros(1, 1, height, width)).shape[-2:] == (height // factor, width // factor)


@PROPERTY_SETTINGS
@given(
    height=sizes,
    width=sizes,
    factor=st.sampled_from([2, 4, 8, 0, -2, 3, 5, 2.5]),
    kernel=st.sampled_from(["lanczos2", "gauss", "bicubic", ""]),
)
def test_downsampling_any_settings(height, width, factor, kernel):
    operator = build_or_refuse(
        lambda: Downsampling(factor=factor, kernel=kernel, image_shape=(height, width))
    )
    if operator is not None:
        assert height % factor == 0 and width % factor == 0 and min(height, width) > 0
        assert_adjoint_identity(operator, (height, width), 1, 0)


VALID_MASKS = {
    "height": st.integers(1, 40),
    "width": st.integers(1, 40),
    "kind": st.sampled_from(["random", "blocks", "strokes"]),
    "missing_fraction": st.floats(min_value=0.0, max_value=0.95),
    "block_size": st.integers(1, 20),
    "stroke_width": st.integers(1, 6),
}
ANY_MASKS = {
    "height": sizes,
    "width": sizes,
    "kind": st.sampled_from(["random", "blocks", "strokes", "holes", "file"]),
    "missing_fraction": st.one_of(st.floats(min_value=-0.5, max_value=1.5), st.sampled_from([float("nan")])),
    "block_size": st.integers(-1, 20),
    "stroke_width": st.integers(-1, 6),
}


def inpainting(height, width, kind, missing_fraction, block_size, stroke_width, seed) -> Inpainting:
    return Inpainting(
        (height, width),
        kind=kind,
        missing_fraction=missing_fraction,
        seed=seed,
        block_size=block_size,
        stroke_width=stroke_width,
    )


@PROPERTY_SETTINGS
@given(num_channels=channels, seed=seeds, **VALID_MASKS)
def test_inpainting_adjoint(num_channels, seed, **kwargs):
    operator = inpainting(seed=seed, **kwargs)
    assert operator.image_shape == (kwargs["height"], kwargs["width"])
    assert bool(((operator.mask >= 0) & (operator.mask <= 1)).all())
    assert_adjoint_identity(operator, operator.image_shape, num_channels, seed)


@PROPERTY_SETTINGS
@given(seed=seeds, **ANY_MASKS)
def test_inpainting_any_settings(seed, **kwargs):
    operator = build_or_refuse(lambda: inpainting(seed=seed, **kwargs))
    if operator is not None:
        assert 0.0 <= kwargs["missing_fraction"] < 1.0  # NaN included: it is refused
        assert_adjoint_identity(operator, operator.image_shape, 1, seed)


@pytest.fixture(scope="module")
def matrix_cache(tmp_path_factory) -> Path:
    """A private system-matrix cache, so the test leaves the user's cache alone."""
    return tmp_path_factory.mktemp("ray_transform_cache")


VALID_GEOMETRIES = {
    "height": st.integers(2, 20),
    "width": st.integers(2, 20),
    "num_angles": st.integers(1, 12),
    "beam": st.sampled_from(["parallel", "fan"]),
    "detector_count": st.none(),
    "detector_spacing": st.sampled_from([0.5, 1.0, 2.0]),
}
ANY_GEOMETRIES = {
    "height": st.integers(-1, 20),
    "width": st.integers(-1, 20),
    "num_angles": st.integers(-1, 12),
    "beam": st.sampled_from(["parallel", "fan", "cone"]),
    "detector_count": st.one_of(st.none(), st.integers(-1, 80)),
    "detector_spacing": st.sampled_from([0.5, 1.0, 2.0, 0.0, -1.0, float("nan")]),
}


def ray_transform(cache: Path, height, width, **kwargs) -> RayTransform:
    return RayTransform(image_shape=(height, width), cache_dir=cache, **kwargs)


@PROPERTY_SETTINGS
@given(seed=seeds, **VALID_GEOMETRIES)
def test_ray_transform_adjoint(matrix_cache, seed, **kwargs):
    operator = ray_transform(matrix_cache, **kwargs)
    assert_adjoint_identity(operator, (kwargs["height"], kwargs["width"]), 1, seed)


@PROPERTY_SETTINGS
@given(seed=seeds, **ANY_GEOMETRIES)
def test_ray_transform_any_settings(matrix_cache, seed, **kwargs):
    operator = build_or_refuse(lambda: ray_transform(matrix_cache, **kwargs))
    if operator is not None:
        assert kwargs["num_angles"] >= 1 and min(kwargs["height"], kwargs["width"]) >= 1
        assert kwargs["detector_spacing"] > 0
        assert_adjoint_identity(operator, (kwargs["height"], kwargs["width"]), 1, seed)


ANY_FOURIER = {
    "height": sizes,
    "width": sizes,
    "acceleration": st.one_of(st.floats(0.0, 12.0), st.sampled_from([float("nan"), float("inf")])),
    "center_fraction": st.one_of(st.floats(-0.2, 1.2), st.sampled_from([float("nan")])),
}


@PROPERTY_SETTINGS
@given(seed=seeds, num_channels=channels, **ANY_FOURIER)
def test_fourier_any_settings(seed, num_channels, height, width, acceleration, center_fraction):
    operator = build_or_refuse(lambda: MaskedFourier((height, width), acceleration, center_fraction, seed))
    if operator is not None:
        assert acceleration >= 1.0 and 0.0 <= center_fraction <= 1.0 and min(height, width) >= 2
        rows = operator.mask[0, 0, :, 0]
        assert torch.equal(rows, rows[(-torch.arange(height)) % height])  # conjugate-symmetric
        assert abs(operator.sampled_lines - max(1, round(height / acceleration))) <= 1
        assert adjoint_relative_error(operator, (height, width), num_channels, seed=seed) < 1e-10
        x = torch.randn(1, num_channels, height, width, generator=torch.Generator().manual_seed(seed))
        y = operator(x)
        torch.testing.assert_close(operator(operator.pseudo_inverse(y)), y, rtol=1e-5, atol=1e-5)
