"""Image loading: format round trips, normalisation, channels, sizing and every user-facing error."""

from __future__ import annotations

import importlib.util
import sys
import types
import warnings

import nibabel
import numpy as np
import pydicom
import pytest
import tifffile
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from dip_lightning.data.intensity import IntensityTransform, to_channels, to_unit_range
from dip_lightning.data.io import read_array, read_raw
from dip_lightning.data.size import centre_crop, fit_size, resize, unpad
from dip_lightning.data.sources import (
    PACKAGE_IMAGES,
    ArrayImage,
    FileImage,
    LoadedImage,
    PackageImage,
    PhantomImage,
    pydicom_test_file,
)
from dip_lightning.errors import ConfigError, InputFileError

torch.set_num_threads(1)
RNG = np.random.default_rng(0)


def _grey_u8(height: int = 16, width: int = 20) -> np.ndarray:
    return RNG.integers(0, 256, size=(height, width), dtype=np.uint8)


def _save_png(path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------


def test_png_grey_round_trip(tmp_path):
    data = _grey_u8()
    _save_png(tmp_path / "grey.png", data)
    out = read_array(tmp_path / "grey.png")
    assert out.dtype == np.float64
    assert out.shape == (16, 20)
    np.testing.assert_array_equal(out, data.astype(np.float64))


def test_png_16bit_keeps_values(tmp_path):
    data = RNG.integers(0, 65536, size=(10, 14), dtype=np.uint16)
    Image.fromarray(data).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(read_array(tmp_path / "deep.png"), data.astype(np.float64))


def test_png_rgb_and_rgba_round_trip(tmp_path):
    rgb = RNG.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
    _save_png(tmp_path / "rgb.png", rgb)
    np.testing.assert_array_equal(read_array(tmp_path / "rgb.png"), rgb)
    rgba = np.concatenate([rgb, np.full((12, 10, 1), 7, np.uint8)], axis=-1)
    _save_png(tmp_path / "rgba.png", rgba)
    out = read_array(tmp_path / "rgba.png")
    assert out.shape == (12, 10, 3)  # alpha dropped
    np.testing.assert_array_equal(out, rgb)


def test_grey_with_alpha_becomes_grey(tmp_path):
    grey = _grey_u8()
    Image.fromarray(np.stack([grey, np.full_like(grey, 255)], axis=-1), mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_array(tmp_path / "la.png"), grey)


def test_suffix_is_case_insensitive_and_bmp_reads(tmp_path):
    data = _grey_u8()
    Image.fromarray(data).save(tmp_path / "UPPER.BMP")
    np.testing.assert_array_equal(read_array(tmp_path / "UPPER.BMP"), data)


def test_jpeg_round_trip_is_close(tmp_path):
    smooth = np.tile(np.linspace(0, 255, 32), (24, 1)).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "img.jpeg", quality=95)
    Image.fromarray(smooth).save(tmp_path / "img.jpg", quality=95)
    for name in ("img.jpeg", "img.jpg"):
        out = read_array(tmp_path / name)
        assert out.shape == (24, 32)
        assert np.abs(out - smooth).max() <= 4


def test_16bit_tif_keeps_values_and_dtype(tmp_path):
    data = RNG.integers(0, 65536, size=(16, 18), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "img16.tif", data)
    raw = read_raw(tmp_path / "img16.tif")
    assert raw.dtype == np.uint16
    np.testing.assert_array_equal(raw, data)
    unit, transform = to_unit_range(raw, "dtype")
    assert transform.scale == 65535.0 and transform.offset == 0.0
    np.testing.assert_allclose(unit, data / 65535.0)


def test_tif_fallbacks_for_float_and_16bit_rgb(tmp_path):
    flt = RNG.random((10, 12)).astype(np.float32) * 1000 - 500
    tifffile.imwrite(tmp_path / "f.tiff", flt)
    np.testing.assert_array_equal(read_array(tmp_path / "f.tiff"), flt.astype(np.float64))
    rgb16 = RNG.integers(0, 65536, size=(10, 12, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb16, photometric="rgb")
    np.testing.assert_array_equal(read_array(tmp_path / "rgb16.tif"), rgb16)


def test_tif_page_stack_slices_first_axis(tmp_path):
    stack = RNG.integers(0, 255, size=(3, 10, 12), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    np.testing.assert_array_equal(read_array(tmp_path / "stack.tif", slice_index=2), stack[2])
    np.testing.assert_array_equal(read_array(tmp_path / "stack.tif"), stack[1])


def test_float_npy_round_trip(tmp_path):
    data = RNG.normal(size=(9, 11))
    np.save(tmp_path / "a.npy", data)
    np.testing.assert_array_equal(read_array(tmp_path / "a.npy"), data)


def test_3d_npy_slices_and_channels(tmp_path):
    vol = RNG.normal(size=(5, 16, 12))
    np.save(tmp_path / "vol.npy", vol)
    np.testing.assert_array_equal(read_array(tmp_path / "vol.npy", slice_index=3, slice_axis=0), vol[3])
    # Without data.slice_index a .npy volume is ambiguous (which axis?), so it is refused with
    # the shapes that are accepted rather than sliced along some axis by guess.
    with pytest.raises(InputFileError, match=r"shape \(5, 16, 12\).*2-D image.*1 or 3.*data\.slice_index"):
        read_array(tmp_path / "vol.npy", slice_axis=0)
    rgb = RNG.random((16, 12, 3))
    np.save(tmp_path / "rgb.npy", rgb)
    assert read_array(tmp_path / "rgb.npy").shape == (16, 12, 3)
    # an explicit slice index turns the last axis into a slice axis
    np.testing.assert_array_equal(read_array(tmp_path / "rgb.npy", slice_index=1), rgb[..., 1])


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_round_trip_with_slice_index(tmp_path, suffix):
    vol = RNG.normal(size=(16, 12, 9)).astype(np.float32)
    path = tmp_path / f"vol{suffix}"
    nibabel.save(nibabel.Nifti1Image(vol, np.eye(4)), path)
    np.testing.assert_allclose(read_array(path, slice_index=7), vol[:, :, 7])
    np.testing.assert_allclose(read_array(path), vol[:, :, 4])  # middle along the last axis
    np.testing.assert_allclose(read_array(path, slice_index=0, slice_axis=1), vol[:, 0, :].astype(float))


def test_nifti_4d_uses_first_volume(tmp_path):
    series = RNG.normal(size=(10, 9, 4, 3)).astype(np.float32)
    path = tmp_path / "series.nii.gz"
    nibabel.save(nibabel.Nifti1Image(series, np.eye(4)), path)
    np.testing.assert_allclose(read_array(path, slice_index=1), series[:, :, 1, 0])


def test_dicom_ct_small_in_hounsfield_units():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    out = read_array(path)
    assert out.shape == (128, 128)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(out, expected)


def test_dicom_modified_copy(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.RescaleSlope = 2
    ds.RescaleIntercept = -1000
    ds.save_as(tmp_path / "copy.dcm")
    out = read_array(tmp_path / "copy.dcm")
    np.testing.assert_array_equal(out, ds.pixel_array * 2.0 - 1000.0)
    unit, transform = to_unit_range(read_raw(tmp_path / "copy.dcm"), window=(-100.0, 300.0))
    assert transform.offset == -100.0 and transform.scale == 400.0
    assert unit.min() >= 0.0 and unit.max() <= 1.0


def test_dicom_undecodable_compression_names_syntax_and_decoders():
    if importlib.util.find_spec("pylibjpeg") or importlib.util.find_spec("gdcm"):
        pytest.skip("a JPEG-LS decoder is installed here")
    with pytest.raises(InputFileError) as info:
        read_array(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    message = str(info.value)
    assert "JPEG-LS Lossless" in message and "pylibjpeg" in message and "gdcm" in message


def test_dicom_without_pixels_and_non_dicom(tmp_path):
    with pytest.raises(InputFileError, match="no Pixel Data"):
        read_array(get_testdata_file("rtplan.dcm"))
    (tmp_path / "fake.dcm").write_bytes(b"not a dicom file at all" * 10)
    with pytest.raises(InputFileError, match=r"fake\.dcm"):
        read_array(tmp_path / "fake.dcm")


# --------------------------------------------------------------------------------------------
# Error paths when reading
# --------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(InputFileError, match="does not exist") as info:
        read_array(tmp_path / "absent.png")
    assert "absent.png" in str(info.value)


def test_unknown_suffix_lists_supported(tmp_path):
    (tmp_path / "image.xyz").write_bytes(b"\x00" * 64)
    with pytest.raises(InputFileError, match=r"\.xyz") as info:
        read_array(tmp_path / "image.xyz")
    assert ".png" in str(info.value) and ".nii.gz" in str(info.value)


def test_truncated_png(tmp_path):
    _save_png(tmp_path / "full.png", _grey_u8(64, 64))
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "half.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError, match=r"half\.png"):
        read_array(tmp_path / "half.png")


def test_truncated_nifti_gz(tmp_path):
    vol = RNG.normal(size=(32, 32, 8)).astype(np.float32)
    nibabel.save(nibabel.Nifti1Image(vol, np.eye(4)), tmp_path / "v.nii.gz")
    data = (tmp_path / "v.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError, match=r"cut\.nii\.gz"):
        read_array(tmp_path / "cut.nii.gz")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_npy(tmp_path, bad):
    data = np.zeros((10, 10))
    data[3, 4] = bad
    np.save(tmp_path / "bad.npy", data)
    with pytest.raises(InputFileError, match="NaN or infinite"):
        read_array(tmp_path / "bad.npy")


@pytest.mark.parametrize("shape", [(4, 4), (1, 1), (0, 12), (30, 7)])
def test_too_small_images(tmp_path, shape):
    np.save(tmp_path / "small.npy", np.ones(shape))
    with pytest.raises(InputFileError, match="at least 8x8"):
        read_array(tmp_path / "small.npy")


def test_tiny_png(tmp_path):
    _save_png(tmp_path / "tiny.png", _grey_u8(4, 4))
    with pytest.raises(InputFileError, match="4x4"):
        read_array(tmp_path / "tiny.png")


def test_wrong_channel_counts(tmp_path):
    two = RNG.integers(0, 255, (10, 10, 2), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "two.tif", two, photometric="minisblack", planarconfig="contig")
    with pytest.raises(InputFileError, match="2 channels"):
        read_array(tmp_path / "two.tif")
    rgba16 = RNG.integers(0, 65536, size=(10, 12, 4), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "rgba16.tif", rgba16, photometric="rgb", extrasamples=["unassalpha"])
    np.testing.assert_array_equal(read_array(tmp_path / "rgba16.tif"), rgba16[..., :3])
    np.save(tmp_path / "four_d.npy", np.ones((2, 2, 10, 10)))
    with pytest.raises(InputFileError, match="shape"):
        read_array(tmp_path / "four_d.npy")


def test_bad_slice_index(tmp_path):
    np.save(tmp_path / "vol.npy", np.ones((10, 10, 4)))
    with pytest.raises(ConfigError, match=r"data\.slice_index") as info:
        read_array(tmp_path / "vol.npy", slice_index=4)
    assert "[0, 3]" in str(info.value)
    with pytest.raises(ConfigError, match=r"data\.slice_index"):
        read_array(tmp_path / "vol.npy", slice_index=-1)
    with pytest.raises(ConfigError, match=r"data\.slice_axis"):
        read_array(tmp_path / "vol.npy", slice_index=0, slice_axis=3)
    nibabel.save(nibabel.Nifti1Image(np.ones((10, 10, 4), np.float32), np.eye(4)), tmp_path / "v.nii")
    with pytest.raises(ConfigError, match=r"data\.slice_index"):
        read_array(tmp_path / "v.nii", slice_index=10)


# --------------------------------------------------------------------------------------------
# Intensities and channels
# --------------------------------------------------------------------------------------------


def test_minmax_values_and_inverse():
    raw = np.array([[-1000.0, 0.0], [500.0, 1000.0]])
    unit, transform = to_unit_range(raw)
    np.testing.assert_allclose(unit, [[0.0, 0.5], [0.75, 1.0]])
    assert transform.to_dict() == {"offset": -1000.0, "scale": 2000.0}
    np.testing.assert_allclose(transform.inverse(unit), raw)
    back = transform.inverse(torch.tensor(unit))
    assert isinstance(back, torch.Tensor)
    np.testing.assert_allclose(back.numpy(), raw)


def test_window_clips_then_scales():
    raw = np.array([-1000.0, -100.0, 100.0, 300.0, 2000.0])
    unit, transform = to_unit_range(raw, "minmax", window=(-100.0, 300.0))
    np.testing.assert_allclose(unit, [0.0, 0.0, 0.5, 1.0, 1.0])
    assert transform == IntensityTransform(-100.0, 400.0)


def test_window_outside_data_warns():
    with pytest.warns(UserWarning, match="outside the data range"):
        unit, _ = to_unit_range(np.arange(100.0), window=(500.0, 600.0))
    assert unit.max() == 0.0


def test_dtype_mode():
    unit, transform = to_unit_range(np.array([0, 51, 255], dtype=np.uint8), "dtype")
    np.testing.assert_allclose(unit, [0.0, 0.2, 1.0])
    assert transform.scale == 255.0
    with pytest.raises(ConfigError, match=r"data\.normalise"):
        to_unit_range(np.array([0.5, 1.0]), "dtype")


def test_none_mode_keeps_or_clips_with_warning():
    data = np.array([0.0, 0.25, 1.0])
    unit, transform = to_unit_range(data, "none")
    np.testing.assert_array_equal(unit, data)
    assert transform == IntensityTransform(0.0, 1.0)
    with pytest.warns(UserWarning, match="clipping"):
        unit, _ = to_unit_range(np.array([-0.5, 0.5, 1.5]), "none")
    np.testing.assert_array_equal(unit, [0.0, 0.5, 1.0])


def test_auto_mode_choices():
    assert to_unit_range(np.array([0, 255], np.uint8), "auto")[1].scale == 255.0
    assert to_unit_range(np.array([0.2, 0.4]), "auto")[1] == IntensityTransform(0.0, 1.0)
    assert to_unit_range(np.array([100, 300], np.int16), "auto")[1] == IntensityTransform(100.0, 200.0)


def test_normalisation_errors():
    with pytest.raises(InputFileError, match="constant"):
        to_unit_range(np.full((8, 8), 3.0), source="flat.png")
    with pytest.raises(ConfigError, match=r"data\.normalise"):
        to_unit_range(np.ones(3), "zscore")
    with pytest.raises(ConfigError, match=r"data\.window"):
        to_unit_range(np.arange(3.0), window=(5.0, 1.0))
    with pytest.raises(ConfigError, match=r"data\.window"):
        to_unit_range(np.arange(3.0), window=(1.0,))
    with pytest.raises(ConfigError, match=r"data\.window"):
        to_unit_range(np.arange(3, dtype=np.uint8), "dtype", window=(0.0, 1.0))
    with pytest.raises(ValueError, match="scale"):
        IntensityTransform(0.0, 0.0)


def test_channel_conversion():
    grey = RNG.random((8, 9))
    rgb = RNG.random((8, 9, 3))
    assert to_channels(grey, None).shape == (1, 8, 9)
    kept = to_channels(rgb, None)
    assert kept.shape == (3, 8, 9)
    np.testing.assert_array_equal(kept[1], rgb[..., 1])
    luma = to_channels(rgb, 1)
    np.testing.assert_allclose(luma[0], 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2])
    repeated = to_channels(grey, 3)
    assert repeated.shape == (3, 8, 9)
    np.testing.assert_array_equal(repeated[2], grey)
    np.testing.assert_array_equal(to_channels(grey[..., None], 1)[0], grey)
    with pytest.raises(ConfigError, match=r"data\.channels"):
        to_channels(grey, 2)


# --------------------------------------------------------------------------------------------
# Spatial size
# --------------------------------------------------------------------------------------------


def test_fit_size_crop_warns_with_sizes():
    image = torch.arange(30 * 45, dtype=torch.float32).reshape(1, 30, 45)
    with pytest.warns(UserWarning, match="30x45 to 16x32"):
        out, padding = fit_size(image, 16, 16, "crop")
    assert out.shape == (1, 16, 32) and padding == (0, 0, 0, 0)
    torch.testing.assert_close(out, image[:, 7:23, 6:38])


def test_fit_size_pad_and_unpad():
    image = torch.rand(3, 30, 45)
    with pytest.warns(UserWarning, match="30x45 to 32x48"):
        out, padding = fit_size(image, 16, 16, "pad")
    assert out.shape == (3, 32, 48)
    assert padding == (1, 2, 1, 1)
    torch.testing.assert_close(unpad(out, padding), image)
    torch.testing.assert_close(out[:, 0, 1:-2], image[:, 1, :])  # reflection, not zeros


def test_fit_size_no_change_needed():
    image = torch.rand(1, 32, 48)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, padding = fit_size(image, 16, 16, "error")
    assert out is image and padding == (0, 0, 0, 0)


def test_fit_size_errors():
    with pytest.raises(ConfigError, match="size_policy") as info:
        fit_size(torch.rand(1, 30, 32), 16, 16, "error")
    assert "multiples of 16" in str(info.value)
    with pytest.raises(ConfigError, match="size_policy"):
        fit_size(torch.rand(1, 32, 32), 16, 16, "stretch")
    with pytest.raises(ConfigError, match=r"data\.path") as info:
        fit_size(torch.rand(1, 12, 40), 16, 16, "pad")
    assert "image is 12x40 but the network needs at least 16 pixels per side (model has 4 scales)" in str(
        info.value
    )
    with pytest.raises(ConfigError, match=r"data\.size"):
        fit_size(torch.rand(1, 20, 40), 16, 20, "crop", setting="data.size", scales=4)


def test_centre_crop_and_resize():
    image = torch.arange(100, dtype=torch.float32).reshape(1, 10, 10)
    torch.testing.assert_close(centre_crop(image, 4), image[:, 3:7, 3:7])
    assert centre_crop(image, (2, 6)).shape == (1, 2, 6)
    with pytest.raises(ConfigError, match=r"data\.size"):
        centre_crop(image, 12)
    checker = (torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2
    small = resize(checker.float()[None], 16)
    assert small.shape == (1, 16, 16)
    assert torch.allclose(small, torch.full_like(small, 0.5), atol=0.05)  # antialiased, no moiré
    assert resize(torch.rand(2, 3, 20, 20), (8, 12)).shape == (2, 3, 8, 12)


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("camera", (1, 512, 512)),
        ("ct_small", (1, 128, 128)),
        ("mr_small", (1, 64, 64)),
        ("ct_head", (1, 512, 512)),
        ("mr_abdomen", (1, 300, 484)),
        ("nifti_example", (1, 128, 96)),
        ("microaneurysms", (1, 102, 102)),
        ("immunohistochemistry", (3, 512, 512)),
        ("cell", (1, 660, 550)),
        ("shepp_logan_400", (1, 400, 400)),
        ("retina", (3, 1411, 1411)),
    ],
)
def test_package_images_load_offline(name, shape):
    loaded = PackageImage(name).load()
    assert isinstance(loaded, LoadedImage)
    assert tuple(loaded.image.shape) == shape
    assert loaded.image.dtype == torch.float32
    assert float(loaded.image.min()) >= 0.0 and float(loaded.image.max()) <= 1.0
    assert loaded.name == name


def test_every_registered_package_image_is_tested():
    assert set(PACKAGE_IMAGES) == {
        "camera", "retina", "microaneurysms", "immunohistochemistry", "cell", "shepp_logan_400",
        "ct_small", "mr_small", "ct_head", "mr_abdomen", "nifti_example",
    }  # fmt: skip


def test_package_image_crop_resize_channels():
    cropped = PackageImage("camera", size=64, channels=3).load()
    assert cropped.image.shape == (3, 64, 64)
    full = PackageImage("camera").load().image
    torch.testing.assert_close(cropped.image[0], full[0, 224:288, 224:288])
    resized = PackageImage("ct_small", size=[32, 48], resize=True).load()
    assert resized.image.shape == (1, 32, 48)
    ct = PackageImage("ct_small").load()
    raw = read_array(get_testdata_file("CT_small.dcm"))
    np.testing.assert_allclose(ct.transform.inverse(ct.image[0].double().numpy()), raw, atol=1e-3)


def test_unknown_package_name_lists_available():
    with pytest.raises(ConfigError, match=r"data\.name") as info:
        PackageImage("lena")
    assert "camera" in str(info.value) and "ct_small" in str(info.value)


def test_pydicom_file_not_bundled():
    with pytest.raises(InputFileError, match="not bundled"):
        pydicom_test_file("no_such_file_anywhere.dcm")


def test_file_image(tmp_path):
    vol = np.stack([np.full((16, 20), float(i)) for i in range(5)], axis=-1)
    vol[0, 0, :] = -10.0
    np.save(tmp_path / "stack.npy", vol)
    loaded = FileImage(str(tmp_path / "stack.npy"), slice_index=3, size=8).load()
    assert loaded.image.shape == (1, 8, 8)
    assert loaded.name == "stack_slice3"
    assert loaded.transform == IntensityTransform(-10.0, 13.0)
    torch.testing.assert_close(loaded.image, torch.ones(1, 8, 8))
    nibabel.save(nibabel.Nifti1Image(vol.astype(np.float32), np.eye(4)), tmp_path / "stack.nii.gz")
    assert FileImage(str(tmp_path / "stack.nii.gz")).load().name == "stack"


def test_file_image_settings_fail_before_reading(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        FileImage(str(tmp_path / "none.png"))
    _save_png(tmp_path / "ok.png", _grey_u8())
    path = str(tmp_path / "ok.png")
    with pytest.raises(ConfigError, match=r"data\.normalise"):
        FileImage(path, normalise="zscore")
    with pytest.raises(ConfigError, match=r"data\.window"):
        FileImage(path, normalise="dtype", window=[0, 100])
    with pytest.raises(ConfigError, match=r"data\.size"):
        FileImage(path, size=4)
    with pytest.raises(ConfigError, match=r"data\.size"):
        FileImage(path, size=[8, 8, 8])
    with pytest.raises(ConfigError, match=r"data\.channels"):
        FileImage(path, channels=2)
    with pytest.raises(ConfigError, match=r"data\.slice_index"):
        FileImage(path, slice_index="3")
    with pytest.raises(ConfigError, match=r"data\.size"):
        FileImage(path, size=64).load()  # larger than the 16x20 image


def test_array_image():
    data = RNG.random((12, 10))
    loaded = ArrayImage(data, "noise").load()
    np.testing.assert_allclose(loaded.image[0].numpy(), data, atol=1e-7)
    assert loaded.transform == IntensityTransform(0.0, 1.0)
    chw = ArrayImage(torch.rand(3, 12, 10)).load()
    assert chw.image.shape == (3, 12, 10)
    with pytest.raises(InputFileError, match="NaN"):
        ArrayImage(np.full((10, 10), np.nan))
    with pytest.raises(InputFileError, match="constant"):
        ArrayImage(np.full((10, 10), 5.0), normalise="minmax").load()


def test_phantom_image_uses_phantom_module(monkeypatch):
    fake = types.ModuleType("dip_lightning.data.phantoms")
    fake.shepp_logan = lambda size: np.linspace(0, 1, size * size).reshape(size, size)
    fake.random_ellipses = lambda size, seed: np.full((size, size), seed / 10.0)
    monkeypatch.setitem(sys.modules, "dip_lightning.data.phantoms", fake)
    loaded = PhantomImage("shepp_logan", size=16).load()
    assert loaded.image.shape == (1, 16, 16) and loaded.name == "shepp_logan_16"
    assert float(loaded.image.max()) == 1.0
    ellipses = PhantomImage("ellipses", size=8, seed=3).load()
    torch.testing.assert_close(ellipses.image, torch.full((1, 8, 8), 0.3))
    with pytest.raises(ConfigError, match=r"data\.kind"):
        PhantomImage("brain")
    with pytest.raises(ConfigError, match=r"data\.size"):
        PhantomImage(size=4)
    with pytest.raises(ConfigError, match=r"data\.seed"):
        PhantomImage(seed=-1)


def test_phantom_image_with_real_module():
    if importlib.util.find_spec("dip_lightning.data.phantoms") is None:
        pytest.skip("dip_lightning.data.phantoms is not available")
    for kind in ("shepp_logan", "ellipses"):
        loaded = PhantomImage(kind, size=32, seed=1).load()
        assert loaded.image.shape == (1, 32, 32)
        assert loaded.image.dtype == torch.float32
        assert float(loaded.image.min()) >= 0.0 and float(loaded.image.max()) <= 1.0
        assert float(loaded.image.std()) > 0.0
