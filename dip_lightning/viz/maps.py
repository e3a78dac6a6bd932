"""Turn tensors (images, error and uncertainty maps) into uint8 arrays for logging and saving.

Only matplotlib's colormap registry is used, never pyplot, so these work in headless workers
and leave the user's plotting backend alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from dip_lightning.errors import ConfigError

if TYPE_CHECKING:
    from dip_lightning.physics.base import ForwardOperator

__all__ = ["colourise", "measurement_display", "side_by_side", "to_display"]

_GAP = 4  # pixels between panels
_LABEL_HEIGHT = 14  # pixels of the label strip above each panel


def _as_2d_map(values: Tensor) -> np.ndarray:
    """Accept (H, W) or (1, H, W); a multi-channel map has no single colour per pixel."""
    if values.ndim == 3 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 2:
        raise ValueError(f"a map must have shape (H, W) or (1, H, W), got {tuple(values.shape)}")
    return values.detach().to("cpu", torch.float64).numpy()


def colourise(
    map: Tensor,
    cmap: str = "inferno",
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """Map a scalar field to an (H, W, 3) uint8 RGB image with a matplotlib colormap.

    ``vmin``/``vmax`` default to the finite min/max of the map; fixing them makes maps from
    different runs comparable. A constant map gets the colormap's lowest colour, and NaN
    pixels get the colormap's "bad" colour.
    """
    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise ConfigError("viz.cmap", cmap, "must be a matplotlib colormap name such as 'inferno'") from None
    data = _as_2d_map(map)
    finite = data[np.isfinite(data)]
    lo = float(vmin) if vmin is not None else float(finite.min()) if finite.size else 0.0
    hi = float(vmax) if vmax is not None else float(finite.max()) if finite.size else 1.0
    if vmin is not None and vmax is not None and not lo <= hi:
        raise ValueError(f"vmin must not exceed vmax, got vmin={vmin} and vmax={vmax}")
    # One explicit limit beyond the data's range: the other limit follows it (a flat map).
    lo, hi = (lo, max(lo, hi)) if vmin is not None else (min(lo, hi), hi)
    scale = hi - lo
    normed = np.clip((data - lo) / scale, 0.0, 1.0) if scale > 0 else np.where(np.isnan(data), np.nan, 0.0)
    rgba = colormap(normed, bytes=True)
    return np.ascontiguousarray(rgba[..., :3])


def to_display(image: Tensor, stretch: bool = False) -> np.ndarray:
    """Convert a (C, H, W) or (1, C, H, W) image in [0, 1] to uint8: (H, W) grey or (H, W, 3) RGB.

    Values are clamped to [0, 1] (NaN shown as 0) because this is for viewing, not measuring.
    ``stretch`` first maps the image's own finite min-max range to [0, 1], for measurements in
    other units (a sinogram of line integrals would otherwise be one white block).
    """
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(
            f"a display image must have shape (C, H, W) or (1, C, H, W) with C in (1, 3), "
            f"got {tuple(image.shape)}"
        )
    data = image.detach().to("cpu", torch.float32)
    if stretch:
        finite = data[torch.isfinite(data)]
        low, high = (float(finite.min()), float(finite.max())) if finite.numel() else (0.0, 1.0)
        data = (data - low) / (high - low) if high > low else torch.zeros_like(data)
    data = torch.nan_to_num(data, nan=0.0).clamp(0.0, 1.0)
    out = (data * 255.0).round().to(torch.uint8).numpy()
    return out[0] if out.shape[0] == 1 else np.ascontiguousarray(out.transpose(1, 2, 0))


def measurement_display(operator: ForwardOperator, measurement: Tensor) -> np.ndarray:
    """A measurement (1, C, ...) as uint8 for viewing: the operator's ``measurement_image`` of it.

    Shown as it is (clipped to [0, 1]) when it is a real image on the image grid (a noisy or
    masked image), else stretched to its own range (a sinogram, log k-space magnitudes).
    """
    with torch.no_grad():
        image = operator.measurement_image(measurement.detach())
    stretch = measurement.is_complex() or not operator.measurement_in_image_space
    return to_display(image.detach().float().cpu(), stretch=stretch)


def _as_rgb_uint8(panel: np.ndarray) -> np.ndarray:
    """Bring a grey or RGB panel (uint8, or float in [0, 1]) to (H, W, 3) uint8."""
    arr = np.asarray(panel)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"a panel must have shape (H, W) or (H, W, 3), got {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        arr = (np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0) * 255.0).round()
    elif arr.dtype != np.uint8:
        raise ValueError(f"a panel must be uint8 or float in [0, 1], got dtype {arr.dtype}")
    arr = arr.astype(np.uint8)
    return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr


def _label_strip(text: str, width: int) -> np.ndarray:
    """A black strip with white text, drawn with PIL's built-in font (no font files needed)."""
    strip = Image.new("RGB", (width, _LABEL_HEIGHT), (0, 0, 0))
    ImageDraw.Draw(strip).text((2, 1), text, fill=(255, 255, 255), font=ImageFont.load_default())
    return np.asarray(strip)


def side_by_side(images: Sequence[np.ndarray], labels: Sequence[str] | None = None) -> np.ndarray:
    """Place images left to right on a black background, optionally with a label above each.

    Panels are padded at the bottom to a common height and grey panels become RGB, so the
    result is one (H, W, 3) uint8 image ready for a logger or a PNG.
    """
    if len(images) == 0:
        raise ValueError("side_by_side needs at least one image")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"got {len(labels)} labels for {len(images)} images")
    panels = [_as_rgb_uint8(im) for im in images]
    if labels is not None:
        panels = [np.concatenate([_label_strip(t, p.shape[1]), p], axis=0) for t, p in zip(labels, panels)]
    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + _GAP * (len(panels) - 1)
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    x = 0
    for p in panels:
        canvas[: p.shape[0], x : x + p.shape[1]] = p
        x += p.shape[1] + _GAP
    return canvas
