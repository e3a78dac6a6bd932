"""Reading image files into finite 2-D arrays (PNG, JPEG, TIFF, BMP, NumPy, DICOM, NIfTI).

Every failure names the file or the setting at fault so the user can fix it without reading a
traceback. Mapping intensities to [0, 1] is :mod:`dip_lightning.data.intensity`; fitting the size
to a network is :mod:`dip_lightning.data.size`.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dip_lightning.data.size import MIN_SIDE

# Imported from here by dip_lightning/job/run.py.
from dip_lightning.data.size import fit_size as fit_size
from dip_lightning.errors import ConfigError, InputFileError, check_int

log = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy", ".dcm", ".nii", ".nii.gz")


def file_suffix(path: str | Path) -> str:
    """Lower-case suffix, keeping the double suffix of gzipped NIfTI so it is not read as gzip."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def check_path(path: str | Path) -> Path:
    """Fail early, before any decoding, if the file is missing or of a type we cannot read."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "the file does not exist")
    if not path.is_file():
        raise InputFileError(path, "this is a directory, not an image file")
    suffix = file_suffix(path)
    if suffix not in SUPPORTED_SUFFIXES:
        shown = suffix or "(none)"
        raise InputFileError(
            path, f"unknown file type '{shown}'; supported types are {', '.join(SUPPORTED_SUFFIXES)}"
        )
    return path


def read_array(path: str | Path, slice_index: int | None = None, slice_axis: int = -1) -> np.ndarray:
    """Read one 2-D image as float64, shape (H, W) or (H, W, 3).

    Volumes (3-D NumPy, NIfTI, multi-frame DICOM) give the slice ``slice_index`` along
    ``slice_axis``; without an index the middle slice is used and logged.
    """
    return read_raw(path, slice_index, slice_axis).astype(np.float64)


def read_raw(path: str | Path, slice_index: int | None = None, slice_axis: int = -1) -> np.ndarray:
    """Like :func:`read_array` but keeps the stored dtype, which ``normalise=dtype`` needs."""
    path = check_path(path)
    reader = _READERS[file_suffix(path)]
    array = reader(path, slice_index, slice_axis)
    return validate_image(array, path)


def validate_image(array: Any, source: object) -> np.ndarray:
    """Return ``array`` as (H, W) or (H, W, 3) if it is a usable image, else raise InputFileError.

    A single trailing channel is squeezed away so grey images have one canonical shape.
    """
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise InputFileError(source, f"pixel type {array.dtype} is not a real number type")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] != 3:
        raise InputFileError(
            source,
            f"the image has {array.shape[-1]} channels (shape {array.shape}); "
            "only grey (1 channel) or RGB (3 channels) is supported",
        )
    if array.ndim not in (2, 3):
        raise InputFileError(source, f"expected a 2-D image but the data has shape {array.shape}")
    height, width = array.shape[:2]
    if height < MIN_SIDE or width < MIN_SIDE:
        raise InputFileError(
            source, f"the image is {height}x{width} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed"
        )
    if array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputFileError(source, f"the image contains {bad} NaN or infinite values")
    return array


def take_slice(volume: np.ndarray, slice_index: int | None, slice_axis: int, source: object) -> np.ndarray:
    """Pick one 2-D slice of a 3-D volume; the middle one (logged) when no index is given."""
    ndim = volume.ndim
    if not -ndim <= check_int("data.slice_axis", slice_axis) < ndim:
        raise ConfigError("data.slice_axis", slice_axis, f"must be an axis of the {ndim}-D volume {source}")
    count = volume.shape[slice_axis]
    if slice_index is None:
        slice_index = count // 2
        log.info(
            "%s is a volume of shape %s; using its middle slice %d along axis %d "
            "(set data.slice_index to choose another)",
            source,
            volume.shape,
            slice_index,
            slice_axis,
        )
    elif not 0 <= check_int("data.slice_index", slice_index) < count:
        raise ConfigError(
            "data.slice_index",
            slice_index,
            f"must lie in [0, {count - 1}] for {source}, whose shape is {volume.shape} "
            f"(slicing along axis {slice_axis})",
        )
    return np.take(volume, int(slice_index), axis=slice_axis)


def _read_pillow(path: Path, slice_index: int | None, slice_axis: int) -> np.ndarray:
    """Decode PNG, JPEG and BMP with Pillow; TIFFs go to :func:`_read_tiff`."""
    try:
        return _pillow_array(path)
    except InputFileError:
        raise
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad files
        raise InputFileError(path, f"the file is unreadable or truncated ({err})") from err


def _pillow_array(path: Path) -> np.ndarray:
    """Open with Pillow and force a full decode so truncation is detected here, not later."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return _pil_to_array(img)


def _read_tiff(path: Path, slice_index: int | None, slice_axis: int) -> np.ndarray:
    """TIFF via tifffile first: Pillow silently reduces 16-bit RGB to 8 bits.

    Pillow remains the fallback for the compressions tifffile cannot decode without extra codecs.
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            array, axes = np.asarray(series.asarray()), series.axes
    except Exception as tiff_err:  # tifffile raises many unrelated types for damaged files
        try:
            return _pillow_array(path)
        except Exception as pil_err:
            raise InputFileError(
                path, f"the file is unreadable or truncated (tifffile: {tiff_err}; Pillow: {pil_err})"
            ) from pil_err
    return _tiff_image(array, axes, slice_index, path)


def _tiff_image(array: np.ndarray, axes: str, slice_index: int | None, path: Path) -> np.ndarray:
    """Use tifffile's axis labels to tell colour samples ('S') from pages of a stack."""
    keep = [i for i, n in enumerate(array.shape) if n > 1]
    array = array.reshape([array.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    if "S" in axes:
        array = np.moveaxis(array, axes.index("S"), -1)
        axes = axes.replace("S", "") + "S"
        if array.shape[-1] == 4:
            array = array[..., :3]  # RGBA: drop alpha
    spatial = len(axes) - axes.count("S")
    if spatial == 3:
        return take_slice(array, slice_index, 0, path)  # a page stack: pages come first
    if spatial > 3:
        raise InputFileError(
            path, f"the TIFF holds data of shape {array.shape} (axes {axes}); only pages of 2-D images work"
        )
    return array


def _pil_to_array(img: Any) -> np.ndarray:
    """Map PIL modes to grey or RGB arrays; alpha carries no intensity and is dropped."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode == "1":
        img = img.convert("L")
    elif mode in ("LA", "La", "PA"):
        img = img.convert("RGBA" if mode == "PA" else "LA")
        mode = img.mode
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa"):
        img = img.convert("RGB")
    array = np.asarray(img)
    if mode in ("RGBA", "LA") and array.ndim == 3:
        array = array[..., :-1]
    return np.ascontiguousarray(array)


def _image_or_slice(array: np.ndarray, slice_index: int | None, slice_axis: int, path: Path) -> np.ndarray:
    """A 3-D array whose last axis holds 1 or 3 values is a colour image unless a slice is asked for."""
    if array.ndim == 3 and (slice_index is not None or array.shape[-1] not in (1, 3)):
        return take_slice(array, slice_index, slice_axis, path)
    return array


def _read_npy(path: Path, slice_index: int | None, slice_axis: int) -> np.ndarray:
    """NumPy files: 2-D images, (H, W, 1|3) colour images or 3-D volumes."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise InputFileError(path, f"the file is not a readable .npy array ({err})") from err
    if not isinstance(array, np.ndarray):
        raise InputFileError(path, "the file does not hold a single array")
    if array.ndim not in (2, 3) or (
        array.ndim == 3 and array.shape[-1] not in (1, 3) and slice_index is None
    ):
        raise InputFileError(path, npy_shape_help(array.shape))
    return _image_or_slice(array, slice_index, slice_axis, path)


def npy_shape_help(shape: tuple[int, ...]) -> str:
    """Why a .npy array of ``shape`` is not an image, and the shapes that are accepted."""
    return (
        f"the array has shape {shape}, which is not an image; accepted are a 2-D image (H, W), "
        "a 3-D image with a last channel axis of 1 or 3 (H, W, 1) or (H, W, 3), or a 3-D volume "
        "with data.slice_index=<i> naming the slice (and data.slice_axis=<axis>, default -1, the "
        "axis it indexes; e.g. data.slice_axis=0 for a (slices, H, W) stack)"
    )


def _read_dicom(path: Path, slice_index: int | None, slice_axis: int) -> np.ndarray:
    """DICOM in physical units (Hounsfield for CT) by applying RescaleSlope/Intercept."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as err:
        raise InputFileError(path, f"the file is not readable as DICOM ({err})") from err
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise InputFileError(path, "the DICOM file holds no image (no Pixel Data element)")
    array = _decode_dicom_pixels(ds, path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        array = take_slice(array, slice_index, 0, path)
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        array = apply_color_lut(array, ds)
    return _apply_rescale(array, ds)


def _decode_dicom_pixels(ds: Any, path: Path) -> np.ndarray:
    """Decode pixel data; compressed syntaxes without a decoder get an install hint."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        return np.asarray(ds.pixel_array)
    except Exception as err:  # decoders raise RuntimeError, ValueError, NotImplementedError, ...
        if syntax is not None and syntax.is_compressed:
            raise InputFileError(
                path,
                f"its pixel data use the compressed transfer syntax '{syntax.name}' ({syntax}), "
                "which cannot be decoded with the installed packages; install pylibjpeg "
                "(with pylibjpeg-libjpeg and pylibjpeg-openjpeg) or python-gdcm "
                f"(decoder said: {str(err).splitlines()[0]})",
            ) from err
        raise InputFileError(path, f"the pixel data cannot be decoded ({err})") from err


def _apply_rescale(array: np.ndarray, ds: Any) -> np.ndarray:
    """Stored values -> modality values; untouched (keeping the dtype) when the rescale is identity."""
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if slope == 1.0 and intercept == 0.0:
        return array
    return array.astype(np.float64) * slope + intercept


def _read_nifti(path: Path, slice_index: int | None, slice_axis: int) -> np.ndarray:
    """NIfTI: 2-D images directly, 3-D volumes by slice, 4-D series by first volume then slice."""
    import nibabel
    from nibabel.filebasedimages import ImageFileError

    try:
        img = nibabel.load(str(path))
        shape = tuple(img.shape)
        while len(shape) > 2 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) > 4:
            raise InputFileError(path, f"the NIfTI data have shape {img.shape}; at most 4-D is supported")
        index = (slice(None),) * min(len(shape), 3) + (0,) * (len(img.shape) - min(len(shape), 3))
        if len(shape) == 4:
            log.info("%s is a 4-D series of shape %s; using its first volume", path, img.shape)
        array = np.asarray(img.dataobj[index])
    except InputFileError:
        raise
    except (ImageFileError, OSError, EOFError, ValueError, zlib.error) as err:
        raise InputFileError(path, f"the file is not readable as NIfTI ({err})") from err
    if array.ndim == 3:
        array = take_slice(array, slice_index, slice_axis, path)
    return array


_READERS: dict[str, Callable[[Path, int | None, int], np.ndarray]] = {
    **dict.fromkeys((".png", ".jpg", ".jpeg", ".bmp"), _read_pillow),
    ".tif": _read_tiff,
    ".tiff": _read_tiff,
    ".npy": _read_npy,
    ".dcm": _read_dicom,
    ".nii": _read_nifti,
    ".nii.gz": _read_nifti,
}
