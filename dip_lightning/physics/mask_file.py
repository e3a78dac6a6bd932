"""Reading an inpainting mask from an image file (png, jpg, tif, bmp or npy) into [0, 1].

Values are scaled by their storage type, colour is averaged, and a file that cannot serve as a
mask raises :class:`~dip_lightning.errors.InputFileError` naming the file and what is wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dip_lightning.errors import ConfigError, InputFileError

__all__ = ["MASK_FILE_SUFFIXES", "read_mask_file"]

MASK_FILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy")


def _load_array(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix in (".tif", ".tiff"):
        try:
            import tifffile
        except ImportError:  # pragma: no cover - tifffile is a declared dependency
            pass
        else:
            return np.asarray(tifffile.imread(path))
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        if image.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
            image = image.convert("RGBA" if "A" in image.mode or "transparency" in image.info else "RGB")
        # 16-bit grey files open as "I;16" (uint16) or "I" (int32) depending on the Pillow version;
        # _to_unit_range scales both by their value range.
        return np.asarray(image)


def _to_unit_range(array: np.ndarray, path: Path) -> np.ndarray:
    """Scale raw mask values to [0, 1]: bool as is, uint8 / 255, uint16 / 65535, floats as they are.

    Integer masks whose values are only 0 and 1 are taken as they are (a common way to save masks);
    other integer types (int32 from Pillow's 16-bit mode "I", int64 from numpy) are divided by 255
    if their maximum is at most 255 and by 65535 otherwise.
    """
    if array.dtype == bool:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0:
            raise InputFileError(path, f"mask values must be non-negative, found {low}")
        if high <= 1:
            return array.astype(np.float32)
        unsigned_bytes = array.dtype.itemsize if array.dtype.kind == "u" else 0
        if unsigned_bytes == 1 or (unsigned_bytes != 2 and high <= 255):
            return array.astype(np.float32) / 255.0
        if unsigned_bytes == 2 or high <= 65535:
            return array.astype(np.float32) / 65535.0
        raise InputFileError(path, f"integer mask values must fit in 16 bits, found maximum {high}")
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise InputFileError(path, "the mask contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < -1e-6 or high > 1 + 1e-6:
            raise InputFileError(
                path, f"floating-point mask values must lie in [0, 1], found [{low:g}, {high:g}]"
            )
        return np.clip(array, 0.0, 1.0)
    raise InputFileError(path, f"unsupported mask data type {array.dtype}")


def _colour_axes_last(array: np.ndarray, path: Path) -> np.ndarray:
    """(H, W), (H, W, 1|3|4), (1|3, H, W), with any leading singleton axes -> (H, W) or (H, W, 3).

    The alpha channel of RGBA / grey-alpha files is dropped; the data type is kept.
    """
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[-1] not in (1, 2, 3, 4) and array.shape[0] == 3:
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] in (1, 2):  # grey, grey + alpha
        array = array[..., 0]
    elif array.ndim == 3 and array.shape[-1] in (3, 4):  # RGB, RGBA
        array = array[..., :3]
    if array.ndim not in (2, 3) or min(array.shape[:2]) == 0:
        raise InputFileError(
            path, f"a mask must be a 2-D grey or RGB image, got an array of shape {array.shape}"
        )
    return array


def read_mask_file(path: str | Path, shape: tuple[int, int] | None = None, invert: bool = False) -> Tensor:
    """Read a mask image (png, jpg, tif, bmp or npy) as a (H, W) float32 tensor in [0, 1].

    Values are scaled by the storage type (uint8 / 255, uint16 / 65535, 0/1 integers and floats as
    they are); RGB masks are averaged over the colour channels. ``invert`` flips the mask (1 - m)
    for files in which white marks the missing pixels. If ``shape`` is given the mask must have
    exactly that (H, W).

    Raises:
        InputFileError: the file is missing, unreadable or holds no usable mask.
        ConfigError: (setting ``operator.mask_path``) the mask size differs from ``shape``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputFileError(path, "no such file" if not path.exists() else "not a regular file")
    if path.suffix.lower() not in MASK_FILE_SUFFIXES:
        raise InputFileError(
            path, f"unknown mask file type {path.suffix!r}; use one of {', '.join(MASK_FILE_SUFFIXES)}"
        )
    try:
        raw = _load_array(path)
    except InputFileError:
        raise
    except Exception as error:  # PIL, numpy and tifffile raise many types for broken files
        raise InputFileError(
            path, f"cannot read it as a mask image ({type(error).__name__}: {error})"
        ) from error
    mask = _to_unit_range(_colour_axes_last(np.asarray(raw), path), path)
    if mask.ndim == 3:
        mask = mask.mean(axis=-1)
    mask = mask.astype(np.float32)
    if invert:
        mask = 1.0 - mask
    if shape is not None and tuple(mask.shape) != tuple(shape):
        raise ConfigError(
            "operator.mask_path",
            str(path),
            f"mask is {mask.shape[0]}x{mask.shape[1]} but image is {shape[0]}x{shape[1]} (height x width); "
            "use a mask of the image's size or resize the image to the mask",
        )
    if not mask.any():
        raise InputFileError(
            path,
            "the mask marks every pixel as missing (1 = observed, 0 = missing)"
            + ("" if invert else "; if white marks the missing pixels, set operator.invert_mask_file=true"),
        )
    return torch.from_numpy(np.ascontiguousarray(mask))
