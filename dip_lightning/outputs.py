"""Writing a run's results into its directory, atomically.

Every file is written to a temporary name and renamed, so an interrupted run never leaves a
half-written file that looks like a result.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dip_lightning.viz.maps import colourise, measurement_display, to_display

if TYPE_CHECKING:
    from dip_lightning.physics.base import ForwardOperator


def atomic_write(path: Path, write: Any, suffix: str) -> Path:
    """Call ``write(tmp_path)`` then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=suffix)
    os.close(handle)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_image(directory: Path, name: str, image: Tensor, stretch: bool = False) -> list[Path]:
    """Save an image (1, C, H, W) or (C, H, W) as ``name.npy`` (raw floats) and ``name.png``.

    The PNG shows [0, 1] clipped, or with ``stretch`` the image's own range (see :func:`to_display`).
    """
    pixels = image.detach().float().cpu()
    npy = atomic_write(
        Path(directory) / f"{name}.npy", lambda tmp: np.save(tmp, pixels.squeeze(0).numpy()), ".npy"
    )
    display = to_display(pixels, stretch=stretch)
    png = atomic_write(
        Path(directory) / f"{name}.png", lambda tmp: Image.fromarray(display).save(tmp, format="PNG"), ".png"
    )
    return [npy, png]


def save_measurement(
    directory: Path, name: str, measurement: Tensor, operator: ForwardOperator
) -> list[Path]:
    """Save a measurement (1, C, ...) as ``name.npy`` (raw values) and ``name.png``.

    The ``.npy`` keeps complex values complex (complex64); the PNG shows the operator's
    ``measurement_image`` (see :func:`dip_lightning.viz.maps.measurement_display`).
    """
    values = measurement.detach()
    raw = values.cpu().to(torch.complex64) if values.is_complex() else values.float().cpu()
    npy = atomic_write(
        Path(directory) / f"{name}.npy", lambda tmp: np.save(tmp, raw.squeeze(0).numpy()), ".npy"
    )
    display = measurement_display(operator, values)
    png = atomic_write(
        Path(directory) / f"{name}.png", lambda tmp: Image.fromarray(display).save(tmp, format="PNG"), ".png"
    )
    return [npy, png]


def save_map(directory: Path, name: str, values: Tensor, cmap: str = "inferno") -> list[Path]:
    """Save a per-pixel map (variance, error) as raw ``.npy`` and a colour-mapped ``.png``."""
    array = values.detach().float().cpu().squeeze(0)
    npy = atomic_write(Path(directory) / f"{name}.npy", lambda tmp: np.save(tmp, array.numpy()), ".npy")
    grey = array.mean(dim=0) if array.dim() == 3 else array
    rgb = colourise(grey, cmap=cmap)
    png = atomic_write(
        Path(directory) / f"{name}.png", lambda tmp: Image.fromarray(rgb).save(tmp, format="PNG"), ".png"
    )
    return [npy, png]


def finite_or_none(value: Any) -> Any:
    """JSON cannot hold NaN or inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def save_json(path: Path, data: dict[str, Any]) -> Path:
    text = json.dumps(finite_or_none(data), indent=2, sort_keys=True, default=str)
    return atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text + "\n"), ".json")


def save_text(path: Path, text: str) -> Path:
    return atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text), Path(path).suffix)
