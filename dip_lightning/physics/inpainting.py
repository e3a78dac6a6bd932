"""Inpainting: the measurement is the image times a mask (1 = observed, 0 = missing).

Masks are generated from a seed (``random`` pixels, square ``blocks``, scribble-like ``strokes``)
or read from an image file (``file``, :mod:`dip_lightning.physics.mask_file`). Soft masks with values in [0, 1] are allowed, e.g. the
anti-aliased hair masks of dermoscopy; the operator is then y = m * x with m the soft mask.

The generators stop at the stroke or block that brings the missing area closest to the requested
fraction, so ``blocks`` and ``strokes`` hit it within half a block or one stroke segment; ``random``
hits it exactly (rounded to whole pixels).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from dip_lightning.errors import ConfigError, InputFileError, check_choice, check_in_range, check_int
from dip_lightning.physics.base import ForwardOperator
from dip_lightning.physics.mask_file import MASK_FILE_SUFFIXES, read_mask_file

__all__ = [
    "MASK_FILE_SUFFIXES",
    "MASK_KINDS",
    "Inpainting",
    "block_mask",
    "random_pixel_mask",
    "read_mask_file",
    "stroke_mask",
]

MASK_KINDS = ("random", "blocks", "strokes", "file")


def _target_missing(shape: tuple[int, int], fraction: float) -> int:
    return round(fraction * shape[0] * shape[1])


def _closer_with(missing: int, added: int, target: int) -> bool:
    """Whether adding ``added`` missing pixels brings the count closer to ``target`` (ties: add)."""
    return abs(missing + added - target) <= abs(target - missing)


def random_pixel_mask(shape: tuple[int, int], fraction: float, rng: np.random.Generator) -> Tensor:
    """A (H, W) float32 mask with exactly round(fraction * H * W) randomly chosen pixels missing."""
    height, width = shape
    mask = np.ones(height * width, dtype=np.float32)
    missing = rng.choice(height * width, size=_target_missing(shape, fraction), replace=False)
    mask[missing] = 0.0
    return torch.from_numpy(mask.reshape(height, width))


def block_mask(shape: tuple[int, int], fraction: float, block_size: int, rng: np.random.Generator) -> Tensor:
    """A (H, W) float32 mask with random square holes of side ``block_size``.

    Holes may overlap and are cropped at the border (their top-left corner is uniform over all
    positions that touch the image, so every pixel is equally likely to be covered). Holes are
    added until the missing fraction is as close to ``fraction`` as a next hole can bring it.
    """
    height, width = shape
    mask = np.ones(shape, dtype=np.float32)
    target, missing = _target_missing(shape, fraction), 0
    size = max(1, int(block_size))
    while missing < target:
        top = int(rng.integers(-size + 1, height))
        left = int(rng.integers(-size + 1, width))
        rows = slice(max(top, 0), min(top + size, height))
        cols = slice(max(left, 0), min(left + size, width))
        added = int(mask[rows, cols].sum())
        if not _closer_with(missing, added, target):
            break
        mask[rows, cols] = 0.0
        missing += added
    return torch.from_numpy(mask)


def stroke_mask(
    shape: tuple[int, int],
    fraction: float,
    stroke_width: int,
    rng: np.random.Generator,
    max_segments: int = 8,
) -> Tensor:
    """A (H, W) float32 mask of random thick polylines, like scribbles or handwriting over an image.

    Each stroke starts at a uniform random point and has 2 to ``max_segments`` straight segments
    whose direction turns by N(0, 0.8 rad) at each vertex and whose lengths are 3% to 12% of the
    larger image side; a stroke that reaches the border ends there. A pixel is missing when its
    centre lies within ``stroke_width / 2`` of a segment. Segments are added until the missing
    fraction is as close to ``fraction`` as the next segment can bring it.
    """
    height, width = shape
    mask = np.ones(shape, dtype=np.float32)
    target, missing = _target_missing(shape, fraction), 0
    radius = max(float(stroke_width) / 2.0, 0.71)  # >= half a diagonal: thin strokes stay connected
    side = max(height, width)
    done = missing >= target
    while not done:
        point = rng.uniform((0.0, 0.0), (height - 1.0, width - 1.0))
        angle = rng.uniform(0.0, 2.0 * math.pi)
        for _ in range(int(rng.integers(2, max(max_segments, 2) + 1))):
            angle += rng.normal(0.0, 0.8)
            length = rng.uniform(0.03, 0.12) * side + 1.0
            direction = np.array([math.sin(angle), math.cos(angle)])
            inside = _length_inside(point, direction, (height - 1.0, width - 1.0))
            leaves = length >= inside  # a stroke that reaches the border ends there
            end = point + min(length, inside) * direction
            rows, cols, near = _segment_pixels(point, end, radius, shape)
            region = mask[rows, cols]
            added = int(region[near].sum())
            if not _closer_with(missing, added, target):
                done = True
                break
            region[near] = 0.0
            missing += added
            if missing >= target:
                done = True
                break
            if leaves:
                break
            point = end
    return torch.from_numpy(mask)


def _length_inside(point: np.ndarray, direction: np.ndarray, upper: tuple[float, float]) -> float:
    """How far one can go from ``point`` along the unit ``direction`` within [0, upper] per axis."""
    limits = []
    for p, d, u in zip(point, direction, upper):
        if d > 1e-12:
            limits.append((u - p) / d)
        elif d < -1e-12:
            limits.append(-p / d)
    return max(0.0, min(limits)) if limits else 0.0


def _segment_pixels(
    start: np.ndarray, end: np.ndarray, radius: float, shape: tuple[int, int]
) -> tuple[slice, slice, np.ndarray]:
    """Bounding box of a thick segment and a boolean map of the pixel centres inside it."""
    low = np.floor(np.minimum(start, end) - radius).astype(int)
    high = np.ceil(np.maximum(start, end) + radius).astype(int) + 1
    rows = slice(max(low[0], 0), min(high[0], shape[0]))
    cols = slice(max(low[1], 0), min(high[1], shape[1]))
    yy, xx = np.meshgrid(
        np.arange(rows.start, rows.stop, dtype=np.float64),
        np.arange(cols.start, cols.stop, dtype=np.float64),
        indexing="ij",
    )
    direction = end - start
    length_sq = float(direction @ direction)
    if length_sq > 0:
        t = ((yy - start[0]) * direction[0] + (xx - start[1]) * direction[1]) / length_sq
        t = np.clip(t, 0.0, 1.0)
    else:
        t = np.zeros_like(yy)
    dist_sq = (yy - start[0] - t * direction[0]) ** 2 + (xx - start[1] - t * direction[1]) ** 2
    return rows, cols, dist_sq <= radius**2


class Inpainting(ForwardOperator):
    """y = m * x for a fixed mask m of shape (1, 1, H, W), 1 = observed and 0 = missing.

    The operator is a diagonal matrix, so it is its own adjoint, ``propagate_variance`` is m^2 v and
    the pseudo-inverse shown for display is the observation itself (missing pixels zero).

    Args:
        image_shape: (H, W) of the images; may be None for ``kind='file'`` (the mask's size).
        kind: ``random`` (pixels), ``blocks`` (square holes), ``strokes`` (thick scribbles) or
            ``file`` (read from ``mask_path``).
        missing_fraction: fraction of missing pixels for the generated kinds, in [0, 1).
        seed: seed of the mask generator (independent of the noise seed).
        block_size: side of the square holes of ``blocks``.
        stroke_width: line width in pixels of ``strokes``.
        mask_path: mask image for ``file`` (png, jpg, tif, bmp or npy; grey or RGB; soft allowed).
        invert_mask_file: use 1 - mask, for files in which white marks the missing pixels.

    Example:
        >>> op = Inpainting((32, 32), kind="random", missing_fraction=0.25, seed=0)
        >>> op.mask.shape, op.observed_fraction
        (torch.Size([1, 1, 32, 32]), 0.75)
    """

    measurement_in_image_space = True

    def __init__(
        self,
        image_shape: tuple[int, int] | None,
        kind: str = "random",
        missing_fraction: float = 0.5,
        seed: int = 0,
        block_size: int = 16,
        stroke_width: int = 3,
        mask_path: str | None = None,
        invert_mask_file: bool = False,
    ) -> None:
        super().__init__()
        check_choice("operator.kind", kind, MASK_KINDS)
        check_in_range("operator.missing_fraction", missing_fraction, 0.0, 1.0)
        shape = None if image_shape is None else (int(image_shape[0]), int(image_shape[1]))
        if shape is None and kind != "file":
            raise ConfigError("operator.image_shape", None, f"kind={kind!r} needs the image size (H, W)")
        if shape is not None and min(shape) <= 0:
            raise ConfigError("operator.image_shape", shape, "height and width must be positive")
        self.kind = kind
        self.missing_fraction = float(missing_fraction)
        self.seed = check_int("operator.seed", seed, 0)
        self.mask_path = mask_path
        rng = np.random.default_rng(self.seed)
        if kind == "random":
            mask = random_pixel_mask(shape, self.missing_fraction, rng)
        elif kind == "blocks":
            size = check_int("operator.block_size", block_size, 1, extra=" (a positive number of pixels)")
            mask = block_mask(shape, self.missing_fraction, size, rng)
        elif kind == "strokes":
            width = check_int(
                "operator.stroke_width", stroke_width, 1, extra=" (a positive number of pixels)"
            )
            mask = stroke_mask(shape, self.missing_fraction, width, rng)
        else:
            if mask_path is None or str(mask_path) == "":
                raise ConfigError(
                    "operator.mask_path", mask_path, "kind='file' needs the path of a mask image"
                )
            try:
                mask = read_mask_file(mask_path, shape, bool(invert_mask_file))
            except InputFileError as error:  # named by this operator's parameter; the job adds the group
                raise error.for_setting("mask_path") from None
        self._set_mask(mask)

    def _set_mask(self, mask: Tensor) -> None:
        mask = mask.to(torch.float32)
        if mask.ndim == 2:
            mask = mask[None, None]
        self.register_buffer("mask", mask)
        self.image_shape = (int(mask.shape[-2]), int(mask.shape[-1]))

    @classmethod
    def from_mask(cls, mask: Tensor) -> Inpainting:
        """An operator with a given mask, (H, W) or (1, 1, H, W), values in [0, 1] (soft allowed)."""
        if mask.ndim == 4 and mask.shape[:2] == (1, 1):
            mask = mask[0, 0]
        if mask.ndim != 2:
            raise ValueError(f"a mask must have shape (H, W) or (1, 1, H, W), got {tuple(mask.shape)}")
        if not bool(((mask >= 0) & (mask <= 1)).all()):
            raise ValueError("mask values must lie in [0, 1]")
        operator = cls.__new__(cls)
        ForwardOperator.__init__(operator)
        operator.kind = "given"
        operator.missing_fraction = float(1.0 - mask.float().mean())
        operator.seed = 0
        operator.mask_path = None
        operator._set_mask(mask.detach().clone())
        return operator

    @property
    def observed_fraction(self) -> float:
        """Mean mask value: the fraction of the image that is observed."""
        return float(self.mask.mean())

    def check_image_shape(self, image_shape: tuple[int, int]) -> None:
        shape = (int(image_shape[0]), int(image_shape[1]))
        if shape != self.image_shape:
            height, width = self.image_shape
            if self.kind == "file":
                setting, value = "operator.mask_path", self.mask_path
            else:
                setting, value = "operator.image_shape", self.image_shape
            raise ConfigError(
                setting,
                value,
                f"mask is {height}x{width} but image is {shape[0]}x{shape[1]} (height x width); "
                "the mask must have the image's size",
            )

    def _mask_like(self, x: Tensor) -> Tensor:
        return self.mask.to(device=x.device, dtype=x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return x * self._mask_like(x)

    def adjoint(self, y: Tensor) -> Tensor:
        return y * self._mask_like(y)

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        return y

    def propagate_variance(self, variance: Tensor) -> Tensor:
        return variance * self._mask_like(variance).square()

    def extra_repr(self) -> str:
        observed = self.observed_fraction
        return f"kind={self.kind!r}, observed_fraction={observed:.3f}, image_shape={self.image_shape}"
