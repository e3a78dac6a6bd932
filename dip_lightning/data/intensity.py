"""Intensities and channels: mapping raw pixel values to [0, 1] and back, grey and colour.

The map is kept (:class:`IntensityTransform`) so that results can be reported in the image's
own units (Hounsfield units for CT, the stored integers of a 16-bit file).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from dip_lightning.errors import ConfigError, InputFileError, check_choice

NORMALISE_MODES = ("minmax", "dtype", "none", "auto")
# ITU-R BT.601 luma weights: the usual choice when a colour photo must become one grey channel.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass
class IntensityTransform:
    """Affine map raw -> [0, 1], kept so results can be reported in the original units."""

    offset: float
    scale: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0 and math.isfinite(self.offset)):
            raise ValueError(f"IntensityTransform needs a finite offset and scale > 0, got {self}")

    def apply(self, raw: Any) -> Any:
        """Raw intensities to the unit range (no clipping)."""
        return (raw - self.offset) / self.scale

    def inverse(self, unit: Any) -> Any:
        """Unit-range values (array, tensor or number) back to raw intensities."""
        return unit * self.scale + self.offset

    def to_dict(self) -> dict[str, float]:
        """Plain numbers, for saving next to results."""
        return {"offset": float(self.offset), "scale": float(self.scale)}


def choose_mode(array: np.ndarray) -> str:
    """Pick a normalisation that keeps the data's own meaning where it is unambiguous."""
    if array.dtype == np.uint8:
        return "dtype"
    if array.dtype.kind == "b":
        return "none"
    if array.dtype.kind == "f" and array.size and float(array.min()) >= 0.0 and float(array.max()) <= 1.0:
        return "none"
    return "minmax"


def to_unit_range(
    array: np.ndarray,
    mode: str = "minmax",
    window: tuple[float, float] | None = None,
    *,
    source: object = "array",
) -> tuple[np.ndarray, IntensityTransform]:
    """Map intensities to [0, 1] (float64) and return the map used.

    ``minmax`` stretches the data range, or clips to ``window`` (e.g. a CT window in HU) first;
    ``dtype`` divides by the integer type's range; ``none`` trusts data already in [0, 1];
    ``auto`` picks one of those from the data.
    """
    check_choice("data.normalise", mode, NORMALISE_MODES)
    array = np.asarray(array)
    if window is not None:
        low, high = check_window(window)
        if mode != "minmax":
            raise ConfigError("data.window", window, "a window can only be used with data.normalise=minmax")
    if mode == "auto":
        mode = choose_mode(array)
    data = array.astype(np.float64)
    if window is not None:
        transform = IntensityTransform(low, high - low)
        if float(data.max()) <= low or float(data.min()) >= high:
            warnings.warn(
                f"The window [{low}, {high}] lies outside the data range "
                f"[{data.min():g}, {data.max():g}] of {source}; the image becomes constant",
                stacklevel=2,
            )
        return np.clip(transform.apply(data), 0.0, 1.0), transform
    if mode == "minmax":
        transform = _minmax_transform(data, source)
    elif mode == "dtype":
        transform = _dtype_transform(array.dtype)
    else:
        transform = IntensityTransform(0.0, 1.0)
    unit = transform.apply(data)
    if mode == "none" and (float(unit.min()) < 0.0 or float(unit.max()) > 1.0):
        warnings.warn(
            f"data.normalise=none but {source} has values in [{unit.min():g}, {unit.max():g}]; "
            "clipping to [0, 1] (use minmax or dtype to rescale instead)",
            stacklevel=2,
        )
    return np.clip(unit, 0.0, 1.0), transform


def check_window(window: Any) -> tuple[float, float]:
    """A window must be two finite numbers, low < high."""
    try:
        low, high = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ConfigError("data.window", window, "must be two numbers [low, high]") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ConfigError("data.window", window, "must be two finite numbers with low < high")
    return low, high


def _minmax_transform(data: np.ndarray, source: object) -> IntensityTransform:
    """Min-max scaling, refusing constant images where it is undefined."""
    low, high = float(data.min()), float(data.max())
    if not high > low:
        raise InputFileError(
            source,
            f"the image is constant (every pixel is {low:g}), so it cannot be normalised to [0, 1] "
            "and holds nothing to reconstruct",
        )
    return IntensityTransform(low, high - low)


def _dtype_transform(dtype: np.dtype) -> IntensityTransform:
    """Full range of an integer type -> [0, 1]; 8-bit gives /255 and 16-bit /65535."""
    if dtype.kind == "b":
        return IntensityTransform(0.0, 1.0)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return IntensityTransform(float(info.min), float(info.max) - float(info.min))
    raise ConfigError(
        "data.normalise",
        "dtype",
        f"needs integer pixel data but this image is {dtype}; use minmax or none",
    )


def to_channels(array: np.ndarray, channels: int | None) -> np.ndarray:
    """(H, W) or (H, W, C) -> (C, H, W); None keeps the image's own channel count."""
    if channels is not None:
        check_choice("data.channels", channels, (1, 3))
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        chw = array[None]
    elif array.ndim == 3 and array.shape[-1] == 3:
        chw = np.moveaxis(array, -1, 0)
    else:
        raise ValueError(f"expected an (H, W) or (H, W, 1|3) array, got shape {array.shape}")
    if channels == 1 and chw.shape[0] == 3:
        weights = np.asarray(LUMA_WEIGHTS, dtype=np.float64)[:, None, None]
        chw = (chw * weights).sum(axis=0, keepdims=True)
    elif channels == 3 and chw.shape[0] == 1:
        chw = np.repeat(chw, 3, axis=0)
    return np.ascontiguousarray(chw)
