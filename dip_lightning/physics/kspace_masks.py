"""Cartesian k-space line masks: which phase-encoding lines an accelerated MRI scan reads.

Every mask is a (n,) bool array over the n lines of one k-space axis, in FFT order (frequency 0
first, as ``torch.fft.fft2`` returns it), drawn from a numpy generator so that a seed fixes it.

* ``mirrored``: the platform's original rule (:func:`mirrored_line_mask`):
  a full centre, then pairs of lines {f, -f} until the count is closest to n / acceleration. The
  mask is conjugate-symmetric and its count is exact.
* ``random``: the rule of the fastMRI challenge (``RandomMaskFunc``). round(n * center_fraction)
  lines around frequency 0 are always read; every other line is read with probability
  p = (n / acceleration - n_centre) / (n - n_centre), so that n / acceleration lines are read on
  average (the count itself varies with the seed).
* ``equispaced``: fastMRI's ``EquispacedMaskFunc``: the same centre, plus every a'-th line from a
  random offset, a' = acceleration (n_centre - n) / (n_centre acceleration - n) chosen so that the
  total is about n / acceleration.

The fastMRI rules place their centre block in the centred (fftshifted) line order, as the
challenge's masks do; the result is returned in FFT order. Neither is conjugate-symmetric.
"""

from __future__ import annotations

import math

import numpy as np

from dip_lightning.errors import ConfigError

__all__ = [
    "MASK_KINDS",
    "centre_count",
    "default_center_fraction",
    "equispaced_line_mask",
    "hermitian_weights",
    "line_mask",
    "mirrored_line_mask",
    "random_line_mask",
]

MASK_KINDS: tuple[str, ...] = ("mirrored", "random", "equispaced")


def _closer_with(count: int, added: int, target: int) -> bool:
    """Whether ``added`` more lines bring the count strictly closer to ``target``."""
    return abs(count + added - target) < abs(target - count)


def mirrored_line_mask(
    height: int, acceleration: float, center_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """A (height,) bool array of sampled k-space rows in FFT order, conjugate-symmetric.

    The rule: the 2r + 1 lines of lowest frequency |f| <= r, r = floor(center_fraction * height / 2),
    then, in a seeded random order, each pair {f, -f} (the Nyquist line alone) that brings the
    count closer to round(height / acceleration); see :mod:`dip_lightning.physics.fourier`. Raises ConfigError when the fully sampled centre
    alone holds more lines than ``acceleration`` allows.
    """
    frequencies = np.rint(np.fft.fftfreq(height) * height).astype(int)
    radius = math.floor(center_fraction * height / 2)
    sampled = np.abs(frequencies) <= radius
    target = max(1, round(height / acceleration))
    count = int(sampled.sum())
    if count > target:
        raise ConfigError(
            "operator.center_fraction",
            center_fraction,
            f"its {count} fully sampled centre lines exceed the {target} of {height} lines that "
            f"acceleration {acceleration:g} allows; lower operator.center_fraction or operator.acceleration",
        )
    # Groups of lines that are each other's mirror image: {f, -f}, or the Nyquist line alone.
    groups = [np.flatnonzero(np.abs(frequencies) == f) for f in range(radius + 1, height // 2 + 1)]
    for index in rng.permutation(len(groups)):
        rows = groups[index]
        if _closer_with(count, len(rows), target):
            sampled[rows] = True
            count += len(rows)
    return sampled


def centre_count(lines: int, acceleration: float, center_fraction: float) -> int:
    """round(lines * center_fraction), refused when it alone exceeds lines / acceleration.

    Also refuses an acceleration that leaves less than one line to read.
    """
    if lines / acceleration < 1.0:
        raise ConfigError(
            "operator.acceleration",
            acceleration,
            f"leaves fewer than one of the {lines} k-space lines to read; the image size allows "
            f"an acceleration of at most {lines}",
        )
    centre = round(lines * center_fraction)
    if centre > lines / acceleration:
        raise ConfigError(
            "operator.center_fraction",
            center_fraction,
            f"its {centre} fully sampled centre lines exceed the {lines / acceleration:g} of {lines} "
            f"lines that acceleration {acceleration:g} allows; lower operator.center_fraction or "
            f"operator.acceleration",
        )
    return centre


def _centred_block(lines: int, centre: int) -> np.ndarray:
    """The fastMRI centre block, in centred order: indices pad .. pad + centre - 1."""
    sampled = np.zeros(lines, dtype=bool)
    pad = (lines - centre + 1) // 2
    sampled[pad : pad + centre] = True
    return sampled


def random_line_mask(
    lines: int, acceleration: float, center_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """fastMRI's random rule (see the module docstring), in FFT order."""
    centre = centre_count(lines, acceleration, center_fraction)
    if centre == lines:
        return np.ones(lines, dtype=bool)
    probability = (lines / acceleration - centre) / (lines - centre)
    sampled = rng.uniform(size=lines) < probability
    sampled |= _centred_block(lines, centre)
    return np.fft.ifftshift(sampled)


def equispaced_line_mask(
    lines: int, acceleration: float, center_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """fastMRI's equispaced rule (see the module docstring), in FFT order."""
    centre = centre_count(lines, acceleration, center_fraction)
    sampled = _centred_block(lines, centre)
    denominator = centre * acceleration - lines
    if denominator < 0:  # the centre leaves room for more lines
        spacing = acceleration * (centre - lines) / denominator
        offset = int(rng.integers(0, max(1, round(spacing))))
        positions = np.around(np.arange(offset, lines - 1, spacing)).astype(int)
        sampled[positions[positions < lines]] = True
    if not sampled.any():  # no centre and a spacing beyond the axis: read frequency 0
        sampled[lines // 2] = True
    return np.fft.ifftshift(sampled)


def line_mask(
    kind: str, lines: int, acceleration: float, center_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """The (lines,) bool mask of rule ``kind`` (one of :data:`MASK_KINDS`), in FFT order."""
    if kind == "mirrored":
        return mirrored_line_mask(lines, acceleration, center_fraction, rng)
    if kind == "random":
        return random_line_mask(lines, acceleration, center_fraction, rng)
    if kind == "equispaced":
        return equispaced_line_mask(lines, acceleration, center_fraction, rng)
    raise ConfigError("operator.mask", kind, "must be one of " + ", ".join(repr(k) for k in MASK_KINDS))


def hermitian_weights(sampled: np.ndarray) -> np.ndarray:
    """Per line: 1 where both f and -f are read, 2 where only one of them, 0 where neither.

    For a real image, reading line f also gives line -f (its complex conjugate); these weights
    turn the zero-filled Re(F^H M y) into the exact least-squares solution (see
    :class:`dip_lightning.physics.fourier.MaskedFourier`).
    """
    mirrored = sampled[(-np.arange(sampled.size)) % sampled.size]
    count = sampled.astype(np.float64) + mirrored.astype(np.float64)
    weights = np.zeros(sampled.size)
    read = count > 0
    weights[read] = 2.0 / count[read]
    return weights


def default_center_fraction(acceleration: float) -> float:
    """fastMRI's pairing: 0.08 at 4x, 0.04 at 8x, that is 0.32 / acceleration (at most 1)."""
    return min(1.0, 0.32 / acceleration) if math.isfinite(acceleration) and acceleration > 0 else 0.0
