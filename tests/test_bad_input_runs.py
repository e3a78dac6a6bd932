"""Bad input files through a whole run: each is refused before training with the file, the
setting that named it and what is wrong (the readers' own cases are in test_data_io.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from pydicom.data import get_testdata_file

from dip_lightning.errors import InputFileError
from dip_lightning.job.run import run


def truncated_png(directory: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(
        directory / "a.png"
    )
    data = (directory / "a.png").read_bytes()
    (directory / "cut.png").write_bytes(data[: len(data) // 2])
    return directory / "cut.png"


def empty_file(directory: Path) -> Path:
    (directory / "empty.png").write_bytes(b"")
    return directory / "empty.png"


def non_finite(directory: Path) -> Path:
    image = np.random.default_rng(0).random((64, 64))
    image[5, 7] = np.inf
    np.save(directory / "inf.npy", image)
    return directory / "inf.npy"


def two_channels(directory: Path) -> Path:
    data = np.random.default_rng(0).integers(0, 255, (64, 64, 2), dtype=np.uint8)
    tifffile.imwrite(directory / "two.tif", data, photometric="minisblack", planarconfig="contig")
    return directory / "two.tif"


def single_pixel(directory: Path) -> Path:
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(directory / "one.png")
    return directory / "one.png"


def zero_size(directory: Path) -> Path:
    np.save(directory / "zero.npy", np.zeros((0, 64)))
    return directory / "zero.npy"


def stack_without_slice(directory: Path) -> Path:
    """(slices, H, W): without data.slice_index it is not an image (it once became a 40x64 one)."""
    np.save(directory / "stack.npy", np.zeros((40, 64, 64), np.float32))
    return directory / "stack.npy"


def a_directory(directory: Path) -> Path:
    (directory / "folder.png").mkdir()
    return directory / "folder.png"


def compressed_dicom(directory: Path) -> Path:
    if importlib.util.find_spec("pylibjpeg") or importlib.util.find_spec("gdcm"):
        pytest.skip("a JPEG-LS decoder is installed here")
    return Path(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))


@pytest.mark.parametrize(
    ("make", "text"),
    [
        (truncated_png, "unreadable or truncated"),
        (empty_file, "unreadable or truncated"),
        (non_finite, "NaN or infinite"),
        (two_channels, "2 channels"),
        (single_pixel, "1x1 pixels; at least 8x8"),
        (zero_size, "at least 8x8"),
        (stack_without_slice, r"shape \(40, 64, 64\), which is not an image; accepted are a 2-D image"),
        (a_directory, "directory"),
        (compressed_dicom, "JPEG-LS"),
    ],
    ids=lambda value: getattr(value, "__name__", None),
)
def test_bad_image_file_is_refused_before_training(small_config, tmp_path, make, text):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    path = make(inputs)
    with pytest.raises(InputFileError, match=text) as info:
        run(small_config("data=file", f"data.path={path}", "data.size=null"))
    assert info.value.setting == "data.path"
    assert f"'{path}' (set by data.path)" in str(info.value)
    assert not (tmp_path / "metrics.json").exists()


def test_unusable_mask_file_names_its_setting(small_config, tmp_path):
    np.save(tmp_path / "mask.npy", np.full((64, 64), np.nan))
    overrides = ["task=inpainting", "operator.kind=file", f"operator.mask_path={tmp_path / 'mask.npy'}"]
    with pytest.raises(InputFileError, match="NaN or infinite") as info:
        run(small_config(*overrides))
    assert info.value.setting == "operator.mask_path"
    assert not (tmp_path / "metrics.json").exists()
