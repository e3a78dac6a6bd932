"""Where the ground-truth image comes from: a file, an image shipped in a package, a phantom or an array.

Each source validates its settings when it is built, so a mistake is reported before any
decoding or training, and ``load()`` always returns a (C, H, W) float32 tensor in [0, 1]
together with the intensity map needed to report results in the original units.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dip_lightning.data.intensity import (
    NORMALISE_MODES,
    IntensityTransform,
    check_window,
    to_channels,
    to_unit_range,
)
from dip_lightning.data.io import check_path, file_suffix, read_raw, validate_image
from dip_lightning.data.size import MIN_SIDE, centre_crop, parse_size, resize
from dip_lightning.errors import ConfigError, InputFileError, check_choice, check_int

PHANTOM_KINDS = ("shepp_logan", "ellipses")


@dataclass
class LoadedImage:
    """A ground-truth image ready for training, with what is needed to undo its normalisation."""

    image: torch.Tensor  # (C, H, W) float32 in [0, 1]
    name: str
    transform: IntensityTransform
    source: str


class ImageSource(ABC):
    """Common size and channel handling, so every source delivers images the same way."""

    def __init__(
        self, size: int | list[int] | None = None, resize: bool = False, channels: int | None = None
    ) -> None:
        self.size = parse_size(size)
        self.resize = bool(resize)
        if channels is not None:
            check_choice("data.channels", channels, (1, 3))
        self.channels = channels

    @abstractmethod
    def load(self) -> LoadedImage:
        """Read the image and return it as a (C, H, W) float32 tensor in [0, 1]."""

    def _finish(self, unit: np.ndarray, name: str, transform: IntensityTransform, source: str) -> LoadedImage:
        """Shared tail: channels, then crop or resize, then float32."""
        tensor = torch.from_numpy(to_channels(unit, self.channels).astype(np.float32))
        if self.size is not None:
            tensor = resize(tensor, self.size) if self.resize else centre_crop(tensor, self.size)
        tensor = tensor.clamp_(0.0, 1.0).contiguous()
        return LoadedImage(image=tensor, name=name, transform=transform, source=source)


# --------------------------------------------------------------------------------------------
# Images shipped inside installed packages (no network access needed)
# --------------------------------------------------------------------------------------------


def _skimage(function: str) -> Callable[[], np.ndarray]:
    """Loader for a scikit-image sample; the chosen ones ship with the wheel, so no download."""

    def load() -> np.ndarray:
        import skimage.data

        return np.asarray(getattr(skimage.data, function)())

    load.__doc__ = f"skimage.data.{function}()"
    return load


def pydicom_test_file(filename: str) -> str:
    """Path of a pydicom test file, refusing to download ones that are not bundled."""
    from pydicom.data import get_testdata_file

    try:
        path = get_testdata_file(filename, download=False)
    except TypeError:  # older pydicom has no ``download`` argument
        path = get_testdata_file(filename)
    if path is None:
        raise InputFileError(
            filename,
            "this pydicom test file is not bundled with the installed pydicom, "
            "so it is not available offline",
        )
    return str(path)


def _pydicom(filename: str) -> Callable[[], np.ndarray]:
    """Loader for a DICOM file from pydicom's bundled test data."""

    def load() -> np.ndarray:
        return read_raw(pydicom_test_file(filename))

    load.__doc__ = f"pydicom test file {filename}"
    return load


def _nibabel_example() -> np.ndarray:
    """Middle slice of the first volume of nibabel's bundled 4-D example."""
    from nibabel.testing import data_path

    return read_raw(os.path.join(data_path, "example4d.nii.gz"))


_nibabel_example.__doc__ = "nibabel.testing example4d.nii.gz"

PACKAGE_IMAGES: dict[str, Callable[[], np.ndarray]] = {
    "camera": _skimage("camera"),
    "retina": _skimage("retina"),
    "microaneurysms": _skimage("microaneurysms"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "cell": _skimage("cell"),
    "shepp_logan_400": _skimage("shepp_logan_phantom"),
    "ct_small": _pydicom("CT_small.dcm"),
    "mr_small": _pydicom("MR_small.dcm"),
    "ct_head": _pydicom("693_J2KI.dcm"),
    "mr_abdomen": _pydicom("examples_overlay.dcm"),
    "nifti_example": _nibabel_example,
}


class PackageImage(ImageSource):
    """A named test image from scikit-image, pydicom or nibabel, so runs work offline."""

    def __init__(
        self,
        name: str,
        size: int | list[int] | None = None,
        resize: bool = False,
        channels: int | None = None,
    ) -> None:
        if name not in PACKAGE_IMAGES:
            raise ConfigError("data.name", name, "must be one of " + ", ".join(sorted(PACKAGE_IMAGES)))
        super().__init__(size, resize, channels)
        self.name = name

    def load(self) -> LoadedImage:
        loader = PACKAGE_IMAGES[self.name]
        raw = validate_image(loader(), self.name)
        # 8-bit photos keep their true grey levels; float phantoms stay as they are; medical data
        # (12-16 bit, Hounsfield units) are stretched to their own range.
        unit, transform = to_unit_range(raw, "auto", source=self.name)
        return self._finish(unit, self.name, transform, source=loader.__doc__ or self.name)


# --------------------------------------------------------------------------------------------
# Files, phantoms and arrays
# --------------------------------------------------------------------------------------------


def describe_path(path: str | Path) -> str:
    """Short name for logs: the file name without its (possibly double) suffix."""
    path = Path(path)
    suffix = file_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.name


def _check_normalise(normalise: str, window: object) -> tuple[float, float] | None:
    """Validate the intensity settings at construction, before anything is decoded."""
    check_choice("data.normalise", normalise, NORMALISE_MODES)
    if window is None:
        return None
    low_high = check_window(window)
    if normalise != "minmax":
        raise ConfigError("data.window", window, "a window can only be used with data.normalise=minmax")
    return low_high


class FileImage(ImageSource):
    """An image file on disk (PNG/JPEG/TIFF/BMP, .npy, DICOM or NIfTI)."""

    def __init__(
        self,
        path: str,
        slice_index: int | None = None,
        slice_axis: int = -1,
        normalise: str = "minmax",
        window: tuple[float, float] | list[float] | None = None,
        size: int | list[int] | None = None,
        resize: bool = False,
        channels: int | None = None,
    ) -> None:
        window = _check_normalise(normalise, window)
        if slice_index is not None:
            check_int("data.slice_index", slice_index, extra=" or null")
        check_int("data.slice_axis", slice_axis)
        super().__init__(size, resize, channels)
        self.path = check_path(path)
        self.slice_index = slice_index
        self.slice_axis = slice_axis
        self.normalise = normalise
        self.window = window

    def load(self) -> LoadedImage:
        raw = read_raw(self.path, self.slice_index, self.slice_axis)
        unit, transform = to_unit_range(raw, self.normalise, self.window, source=self.path)
        name = describe_path(self.path)
        if self.slice_index is not None:
            name = f"{name}_slice{self.slice_index}"
        return self._finish(unit, name, transform, source=str(self.path))


class PhantomImage(ImageSource):
    """A synthetic phantom with an exactly known ground truth, generated at the requested size."""

    def __init__(
        self, kind: str = "shepp_logan", size: int = 128, seed: int = 0, channels: int | None = None
    ) -> None:
        check_choice("data.kind", kind, PHANTOM_KINDS)
        check_int("data.size", size, MIN_SIDE)
        check_int("data.seed", seed, 0)
        super().__init__(None, False, channels)
        self.kind = kind
        self.phantom_size = size
        self.seed = seed

    def load(self) -> LoadedImage:
        # Imported here so the other sources work even where the phantom module is unavailable.
        phantoms = importlib.import_module("dip_lightning.data.phantoms")
        if self.kind == "shepp_logan":
            array = phantoms.shepp_logan(self.phantom_size)
            name = f"shepp_logan_{self.phantom_size}"
        else:
            array = phantoms.random_ellipses(self.phantom_size, self.seed)
            name = f"ellipses_{self.phantom_size}_seed{self.seed}"
        raw = validate_image(array, name)
        unit, transform = to_unit_range(raw, "none", source=name)
        return self._finish(unit, name, transform, source=f"phantom:{self.kind}")


class ArrayImage(ImageSource):
    """An in-memory array, for tests and programmatic use; ``normalise="auto"`` leaves [0, 1] floats as is."""

    def __init__(
        self,
        array: np.ndarray | torch.Tensor,
        name: str = "array",
        normalise: str = "auto",
        window: tuple[float, float] | None = None,
        size: int | list[int] | None = None,
        resize: bool = False,
        channels: int | None = None,
    ) -> None:
        window = _check_normalise(normalise, window)
        super().__init__(size, resize, channels)
        if isinstance(array, torch.Tensor):
            if array.dim() == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
                array = array.permute(1, 2, 0)  # tensors are conventionally (C, H, W)
            array = array.detach().cpu().numpy()
        self.array = validate_image(np.asarray(array), name)
        self.name = name
        self.normalise = normalise
        self.window = window

    def load(self) -> LoadedImage:
        unit, transform = to_unit_range(self.array, self.normalise, self.window, source=self.name)
        return self._finish(unit, self.name, transform, source="array")
