"""Synthetic CT phantoms with an exactly known ground truth.

``shepp_logan`` is the classic test object; ``random_ellipses`` draws the random-ellipse images
used as a training distribution in the CT deep-learning literature (e.g. the "ellipses" data
set next to LoDoPaB-CT), which is what educated-DIP pretraining needs: many cheap images with
sharp edges, piecewise constant regions and realistic support inside the scanner's disc.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from skimage.data import shepp_logan_phantom
from skimage.transform import resize

from dip_lightning.errors import check_int

MIN_SIZE = 8
# Ellipse centres stay inside this fraction of the unit disc, and the image is zero outside the disc.
_CENTRE_RADIUS = 0.85
_DEFAULT_COUNT = (15, 40)


def shepp_logan(size: int) -> np.ndarray:
    """The modified Shepp-Logan phantom, anti-aliased to (size, size), float64 in [0, 1]."""
    size = check_int("data.size", size, MIN_SIZE)
    image = resize(shepp_logan_phantom(), (size, size), order=1, anti_aliasing=True, mode="reflect")
    return np.clip(image.astype(np.float64), 0.0, 1.0)


def _unit_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates on [-1, 1]^2, y pointing up so row 0 is the top."""
    coords = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    x, y = np.meshgrid(coords, -coords)
    return x, y


def random_ellipses(size: int, seed: int, num_ellipses: int | None = None) -> np.ndarray:
    """A random sum of ellipses inside the unit disc, clipped at 0 and scaled to max 1.

    Intensities are drawn from [-0.4, 1] (negative ones cut holes), half-axes from a clipped
    exponential (many small details, a few large structures), centres uniformly in the disc and
    rotations uniformly. The same ``seed`` always gives the same image.
    """
    size = check_int("data.size", size, MIN_SIZE)
    seed = check_int("data.seed", seed, 0)
    rng = np.random.default_rng(seed)
    if num_ellipses is None:
        num_ellipses = int(rng.integers(*_DEFAULT_COUNT, endpoint=True))
    else:
        num_ellipses = check_int("data.num_ellipses", num_ellipses, 1, extra=" (or unset)")
    x, y = _unit_grid(size)
    image = np.zeros((size, size))
    for _ in range(int(num_ellipses)):
        intensity = rng.uniform(-0.4, 1.0)
        axes = np.clip(0.2 * rng.exponential(size=2), 0.02, 0.8)
        radius = _CENTRE_RADIUS * math.sqrt(rng.uniform())
        direction = rng.uniform(0.0, 2.0 * math.pi)
        centre = radius * np.array([math.cos(direction), math.sin(direction)])
        rotation = rng.uniform(0.0, math.pi)
        dx, dy = x - centre[0], y - centre[1]
        cos, sin = math.cos(rotation), math.sin(rotation)
        u, v = (cos * dx + sin * dy) / axes[0], (-sin * dx + cos * dy) / axes[1]
        image[u * u + v * v <= 1.0] += intensity
    image[x * x + y * y > 1.0] = 0.0
    image = np.clip(image, 0.0, None)
    peak = image.max()
    if peak <= 0.0:  # every ellipse was a hole: fall back to a visible object
        image[(x * x + y * y) <= 0.25] = 1.0
        peak = 1.0
    return image / peak


class EllipsesDataset(torch.utils.data.Dataset):
    """``length`` random-ellipse phantoms as (1, size, size) float32 tensors; item i uses seed offset + i."""

    def __init__(self, size: int, length: int, seed_offset: int = 0) -> None:
        self.size = check_int("data.size", size, MIN_SIZE)
        self.length = check_int("data.length", length, 1)
        self.seed_offset = check_int("data.seed", seed_offset, 0)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} phantoms")
        index %= self.length
        image = random_ellipses(self.size, self.seed_offset + index)
        return torch.from_numpy(image.astype(np.float32)).unsqueeze(0)
