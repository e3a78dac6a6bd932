"""How a measurement is saved and shown: the operator's measurement_image, raw values in .npy."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from dip_lightning.outputs import save_image, save_measurement
from dip_lightning.physics.downsampling import Downsampling
from dip_lightning.physics.fourier import MaskedFourier
from dip_lightning.physics.identity import Identity
from dip_lightning.physics.inpainting import Inpainting
from dip_lightning.viz.maps import measurement_display, to_display


def test_real_measurements_are_saved_as_before(tmp_path) -> None:
    """On the image grid: shown as it is; elsewhere (low resolution, sinogram): stretched."""
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 1.4 - 0.2
    for operator, stretch in ((Identity(), False), (Inpainting((16, 16)), False), (Downsampling(2), True)):
        y = operator(x)
        new = save_measurement(tmp_path / "new", "observation", y, operator)
        old = save_image(tmp_path / "old", "observation", y, stretch=stretch)
        for first, second in zip(new, old):
            assert first.name == second.name
            assert first.read_bytes() == second.read_bytes()


def test_default_hook_shows_the_magnitude_of_complex_values() -> None:
    y = torch.tensor([[[[3 + 4j, 0j], [1j, -2 + 0j]]]])
    assert torch.equal(Identity().measurement_image(y), torch.tensor([[[[5.0, 0.0], [1.0, 2.0]]]]))
    real = torch.rand(1, 1, 4, 4)
    assert Identity().measurement_image(real) is real


def test_complex_k_space_is_saved_raw_and_shown_as_log_magnitude(tmp_path) -> None:
    operator = MaskedFourier((16, 16), seed=0)
    y = operator(torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(1)))
    npy, png = save_measurement(tmp_path, "observation", y, operator)
    raw = np.load(npy)
    assert raw.dtype == np.complex64 and raw.shape == (1, 16, 16)
    np.testing.assert_array_equal(raw, y[0].numpy())
    shown = np.asarray(Image.open(png))
    expected = to_display(torch.log1p(torch.fft.fftshift(y.abs(), dim=(-2, -1))), stretch=True)
    np.testing.assert_array_equal(shown, expected)
    assert shown.max() == 255 and shown[8, 8] == 255  # frequency 0, in the centre, is the brightest
    np.testing.assert_array_equal(measurement_display(operator, y), expected)
