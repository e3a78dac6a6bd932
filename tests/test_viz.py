"""Tests of the display helpers and report figures (headless, Agg canvas)."""

from __future__ import annotations

import math
import os

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from dip_lightning.errors import ConfigError
from dip_lightning.metrics.uncertainty import calibration_curve
from dip_lightning.outputs import save_image
from dip_lightning.viz.maps import colourise, side_by_side, to_display
from dip_lightning.viz.plots import calibration_diagram, curves_figure, figure_to_array, save_figure

torch.set_num_threads(1)


# --------------------------------------------------------------------------- maps


def test_colourise_shape_dtype_and_range() -> None:
    ramp = torch.linspace(0, 1, 12).reshape(3, 4)
    rgb = colourise(ramp)
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8
    cmap = matplotlib.colormaps["inferno"]
    assert tuple(rgb[0, 0]) == tuple(cmap(0.0, bytes=True)[:3])
    assert tuple(rgb[-1, -1]) == tuple(cmap(1.0, bytes=True)[:3])
    assert colourise(ramp.unsqueeze(0), cmap="gray").shape == (3, 4, 3)


def test_colourise_vmin_vmax_and_constant() -> None:
    grey = colourise(torch.tensor([[0.0, 0.5, 2.0]]), cmap="gray", vmin=0.0, vmax=1.0)
    # gray maps v -> (v, v, v); 2.0 is clipped to white.
    assert grey[0, 0].tolist() == [0, 0, 0]
    assert abs(int(grey[0, 1, 0]) - 128) <= 1
    assert grey[0, 2].tolist() == [255, 255, 255]
    flat = colourise(torch.full((2, 2), 5.0), cmap="gray")
    assert (flat == 0).all()
    # A single explicit limit beyond the data gives a flat map, not an error.
    assert (colourise(torch.zeros(2, 2), cmap="gray", vmin=1.0) == 0).all()


def test_colourise_errors() -> None:
    with pytest.raises(ConfigError, match=r"viz\.cmap"):
        colourise(torch.zeros(2, 2), cmap="no-such-map")
    with pytest.raises(ValueError, match=r"\(2, 2, 2\)"):
        colourise(torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match="vmin must not exceed vmax"):
        colourise(torch.zeros(2, 2), vmin=1.0, vmax=0.0)


def test_to_display_grey_and_rgb() -> None:
    grey = to_display(torch.tensor([[[-0.5, 0.0], [0.5, 1.5]]]))
    assert grey.dtype == np.uint8 and grey.shape == (2, 2)
    assert grey.tolist() == [[0, 0], [128, 255]]
    rgb = torch.zeros(1, 3, 2, 5)
    rgb[0, 1] = 1.0
    out = to_display(rgb)
    assert out.shape == (2, 5, 3)
    assert (out[..., 1] == 255).all() and (out[..., [0, 2]] == 0).all()
    assert to_display(torch.full((1, 2, 2), math.nan)).tolist() == [[0, 0], [0, 0]]


@pytest.mark.parametrize("shape", [(2, 4, 4), (4, 4), (2, 1, 4, 4)])
def test_to_display_rejects_bad_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="display image"):
        to_display(torch.zeros(shape))


def test_side_by_side_pads_and_converts() -> None:
    a = np.full((4, 3), 200, dtype=np.uint8)
    b = np.zeros((6, 2, 3), dtype=np.uint8)
    b[..., 0] = 255
    panel = side_by_side([a, b])
    assert panel.shape == (6, 3 + 4 + 2, 3) and panel.dtype == np.uint8
    assert (panel[:4, :3] == 200).all() and (panel[4:, :3] == 0).all()
    assert (panel[:, 7:, 0] == 255).all()
    labelled = side_by_side([a, np.ones((5, 5), dtype=np.float32)], labels=["truth", "DIP"])
    assert labelled.shape[0] > 5 and labelled.shape[1] == 3 + 4 + 5
    assert (labelled[-5:, -5:] == 255).all()  # float 1.0 -> white


def test_side_by_side_errors() -> None:
    with pytest.raises(ValueError, match="at least one"):
        side_by_side([])
    with pytest.raises(ValueError, match="2 labels for 1 images"):
        side_by_side([np.zeros((2, 2), np.uint8)], labels=["a", "b"])
    with pytest.raises(ValueError, match="shape"):
        side_by_side([np.zeros((2, 2, 4), np.uint8)])
    with pytest.raises(ValueError, match="dtype"):
        side_by_side([np.zeros((2, 2), np.int64)])


# --------------------------------------------------------------------------- figures


def _curve() -> dict:
    gen = torch.Generator().manual_seed(0)
    variance = torch.rand(2000, generator=gen) * 0.1 + 1e-3
    error_sq = (torch.randn(2000, generator=gen) * variance.sqrt()).square()
    return calibration_curve(error_sq, variance, bins=8)


@pytest.mark.parametrize("log_axes", [True, False])
def test_calibration_diagram_renders(log_axes: bool) -> None:
    fig = calibration_diagram(_curve(), title="MC dropout", log_axes=log_axes)
    ax = fig.axes[0]
    assert "UCE = " in ax.get_title() and "MC dropout" in ax.get_title()
    assert ax.get_xscale() == ("log" if log_axes else "linear")
    arr = figure_to_array(fig)
    assert arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8
    assert arr.shape[0] > 100 and arr.shape[1] > 100
    assert arr.std() > 0  # something was drawn


def test_calibration_diagram_skips_empty_bins_and_no_uce() -> None:
    curve = {
        "variance": [0.1, math.nan, 0.3],
        "mse": [0.2, math.nan, 0.25],
        "counts": [10, 0, 5],
    }
    fig = calibration_diagram(curve, log_axes=False)
    assert fig.axes[0].get_title() == ""
    points = fig.axes[0].collections[0].get_offsets()
    assert len(points) == 2
    figure_to_array(fig)
    # A single occupied bin still renders (degenerate diagonal range).
    figure_to_array(calibration_diagram({"variance": [0.1], "mse": [0.1], "counts": [3]}))


def test_calibration_diagram_errors() -> None:
    with pytest.raises(ValueError, match="missing keys"):
        calibration_diagram({"variance": [0.1], "mse": [0.1]})
    with pytest.raises(ValueError, match="differ in length"):
        calibration_diagram({"variance": [0.1, 0.2], "mse": [0.1], "counts": [1, 1]})


def test_curves_figure() -> None:
    curves = {"run a": [(10, 25.0), (0, 20.0), (20, math.nan)], "run b": [(0, 18.0), (10, 22.0)], "empty": []}
    fig = curves_figure(curves, ylabel="PSNR [dB]", title="denoising")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "PSNR [dB]" and ax.get_title() == "denoising"
    assert len(ax.lines) == 2
    assert list(ax.lines[0].get_xdata()) == [0, 10, 20]  # sorted by step
    assert figure_to_array(fig).dtype == np.uint8
    assert len(curves_figure({}, ylabel="x").axes[0].lines) == 0


def test_save_figure_writes_png_atomically(tmp_path) -> None:
    target = tmp_path / "sub" / "calib.png"
    out = save_figure(calibration_diagram(_curve()), target)
    assert out == target
    with Image.open(target) as img:
        assert img.format == "PNG" and img.size[0] > 100
    assert os.listdir(target.parent) == ["calib.png"]  # no temp file left
    # Overwrite in place.
    save_figure(curves_figure({"a": [(0, 1.0)]}, ylabel="y"), target)
    with Image.open(target) as img:
        assert img.format == "PNG"


def test_save_figure_bad_format_leaves_nothing(tmp_path) -> None:
    with pytest.raises(ValueError, match="xyz"):
        save_figure(curves_figure({}, ylabel="y"), tmp_path / "fig.xyz")
    assert os.listdir(tmp_path) == []


def test_save_image_stretch_shows_measurements_in_other_units(tmp_path):
    sinogram = torch.linspace(-2.0, 40.0, 60 * 90).reshape(1, 1, 60, 90)
    save_image(tmp_path, "clipped", sinogram)
    save_image(tmp_path, "stretched", sinogram, stretch=True)
    clipped = np.asarray(Image.open(tmp_path / "clipped.png"))
    stretched = np.asarray(Image.open(tmp_path / "stretched.png"))
    assert (clipped == 255).mean() > 0.9  # line integrals above 1 saturate without the stretch
    assert stretched.min() == 0 and stretched.max() == 255 and len(np.unique(stretched)) == 256
    # The raw values are saved unchanged either way; a constant measurement shows as black.
    np.testing.assert_array_equal(np.load(tmp_path / "stretched.npy"), sinogram[0].numpy())
    save_image(tmp_path, "flat", torch.full((1, 8, 8), 7.0), stretch=True)
    assert np.asarray(Image.open(tmp_path / "flat.png")).max() == 0
