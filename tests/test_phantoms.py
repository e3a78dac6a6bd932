"""Synthetic phantoms: value range, reproducibility by seed, and input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dip_lightning.data.phantoms import EllipsesDataset, random_ellipses, shepp_logan
from dip_lightning.errors import ConfigError


@pytest.mark.parametrize("size", [8, 33, 64])
def test_shepp_logan_shape_dtype_and_range(size: int) -> None:
    image = shepp_logan(size)
    assert image.shape == (size, size)
    assert image.dtype == np.float64
    assert image.min() >= 0.0 and image.max() <= 1.0
    # The bright skull survives anti-aliased downsampling unless it is thinner than a pixel.
    assert image.max() > (0.6 if size >= 32 else 0.2)


def test_shepp_logan_is_deterministic_and_resembles_the_original() -> None:
    first, second = shepp_logan(64), shepp_logan(64)
    np.testing.assert_array_equal(first, second)
    # The background corners are empty, the centre of the head is not.
    assert first[:4, :4].max() == 0.0
    assert first[28:36, 28:36].mean() > 0.05


def test_random_ellipses_reproducible_by_seed() -> None:
    np.testing.assert_array_equal(random_ellipses(32, seed=7), random_ellipses(32, seed=7))
    assert not np.array_equal(random_ellipses(32, seed=7), random_ellipses(32, seed=8))


@pytest.mark.parametrize("seed", range(6))
def test_random_ellipses_range_and_support(seed: int) -> None:
    size = 48
    image = random_ellipses(size, seed)
    assert image.shape == (size, size) and image.dtype == np.float64
    assert image.min() >= 0.0
    assert image.max() == pytest.approx(1.0)
    coords = (np.arange(size) + 0.5) / size * 2 - 1
    outside = coords[None, :] ** 2 + coords[:, None] ** 2 > 1.0
    assert np.all(image[outside] == 0.0)


def test_random_ellipses_count_changes_the_image() -> None:
    few = random_ellipses(32, seed=3, num_ellipses=1)
    many = random_ellipses(32, seed=3, num_ellipses=30)
    assert not np.array_equal(few, many)
    # One ellipse (or the fallback disc) gives a piecewise constant image with few grey levels.
    assert len(np.unique(few)) <= 2


@pytest.mark.parametrize("size", [7, 0, -3, 8.5, True, "64"])
def test_invalid_size_rejected(size: object) -> None:
    with pytest.raises(ConfigError, match=r"data\.size"):
        shepp_logan(size)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"data\.size"):
        random_ellipses(size, 0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"data\.size"):
        EllipsesDataset(size, 4)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [-1, 1.5, None])
def test_invalid_seed_rejected(seed: object) -> None:
    with pytest.raises(ConfigError, match=r"data\.seed"):
        random_ellipses(16, seed)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"data\.seed"):
        EllipsesDataset(16, 4, seed_offset=seed)  # type: ignore[arg-type]


@pytest.mark.parametrize("count", [0, -2, 2.0])
def test_invalid_ellipse_count_rejected(count: object) -> None:
    with pytest.raises(ConfigError, match=r"data\.num_ellipses"):
        random_ellipses(16, 0, num_ellipses=count)  # type: ignore[arg-type]


def test_ellipses_dataset_items() -> None:
    dataset = EllipsesDataset(size=24, length=5, seed_offset=100)
    assert len(dataset) == 5
    item = dataset[2]
    assert item.shape == (1, 24, 24) and item.dtype == torch.float32
    np.testing.assert_allclose(item[0].numpy(), random_ellipses(24, 102), rtol=1e-6)
    torch.testing.assert_close(dataset[-1], dataset[4])
    assert not torch.equal(dataset[0], dataset[1])
    with pytest.raises(IndexError):
        dataset[5]
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=3)))
    assert batch.shape == (3, 1, 24, 24)


@pytest.mark.parametrize("length", [0, -1, 2.5])
def test_ellipses_dataset_invalid_length(length: object) -> None:
    with pytest.raises(ConfigError, match=r"data\.length"):
        EllipsesDataset(16, length)  # type: ignore[arg-type]
