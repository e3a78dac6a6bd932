"""Masked Fourier measurements through complex sensitivity maps: multi-coil MRI, or one coil with
a smooth synthetic phase.

y_c = M F (S_c x) for coils c = 1 .. N: the real image x is weighted by each coil's complex
sensitivity S_c, transformed by the orthonormal 2D FFT and sampled on the mask of
:class:`~dip_lightning.physics.fourier.MaskedFourier`. The measurement stacks the coils after the
image channels: (B, C * N, H, W), complex.

No package ships raw k-space, so the maps are synthetic and known to the reconstruction:

* ``coils`` > 1: a birdcage-style model. Coil c sits at angle 2 pi c / N on a circle of radius
  ``coil_radius`` (in units of the image's half-width) around the image centre; its magnitude
  falls as 1 / distance from the coil and its phase turns with the angle around it. The maps are
  normalised so that sum_c |S_c|^2 = 1 at every pixel (root-sum-of-squares normalisation).
* ``phase`` > 0: one more factor exp(i phi) on every coil, phi a smooth seeded field (a random
  combination of low-order polynomials, scaled to peak at ``phase`` radians). With one coil this
  is the "magnitude image with a smooth synthetic phase" simulation.

The images stay real: the phase belongs to the known maps, so a method fits the magnitude.

Adjoint (real inner product): A^T y = Re(sum_c conj(S_c) F^H M y_c). The zero-filled baseline is
the sensitivity-weighted coil combination |sum_c conj(S_c) F^H M y_c| / sum_c |S_c|^2 (for one
coil without phase: the magnitude of the zero-filled inverse FFT). It is not the exact
pseudo-inverse; ``data_consistent`` puts the measured lines of every coil back and combines the
coils the same way (ConvDecoder's data-consistency step for multi-coil data).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from dip_lightning.errors import ConfigError, check_finite, check_int
from dip_lightning.physics.fourier import MaskedFourier

__all__ = ["CoilFourier", "birdcage_maps", "smooth_phase"]


def _grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in [-1, 1] along each axis (rows y, columns x)."""
    ys = (np.arange(shape[0]) + 0.5) / shape[0] * 2 - 1
    xs = (np.arange(shape[1]) + 0.5) / shape[1] * 2 - 1
    return np.meshgrid(ys, xs, indexing="ij")


def birdcage_maps(shape: tuple[int, int], coils: int, radius: float = 1.5) -> np.ndarray:
    """(coils, H, W) complex maps, sum_c |S_c|^2 = 1 (see the module docstring)."""
    y, x = _grid(shape)
    maps = []
    for c in range(coils):
        angle = 2 * math.pi * c / coils
        dy, dx = y - radius * math.sin(angle), x - radius * math.cos(angle)
        distance = np.sqrt(dx**2 + dy**2)
        maps.append(np.exp(1j * (np.arctan2(dy, dx) + angle)) / distance)
    stacked = np.stack(maps)
    return stacked / np.sqrt((np.abs(stacked) ** 2).sum(axis=0, keepdims=True))


def smooth_phase(shape: tuple[int, int], amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """(H, W) smooth phase in radians: random low-order polynomial, peak |phi| = amplitude."""
    y, x = _grid(shape)
    terms = [x, y, x * y, x**2 - y**2, x**2 + y**2 - 2 / 3]
    field = sum(rng.standard_normal() * term for term in terms)
    peak = float(np.abs(field).max())
    return field * (amplitude / peak) if peak > 0 else field


class CoilFourier(MaskedFourier):
    """y_c = M F (S_c x): the masked FFT through known complex sensitivity maps.

    Args (besides those of :class:`MaskedFourier`):
        coils: number of receiver coils N (1: no coil weighting).
        phase: peak of the smooth synthetic phase in radians (0: none).
        coil_radius: distance of the birdcage coils from the centre, in image half-widths (> 1).
    """

    def __init__(
        self,
        image_shape: tuple[int, int] | None,
        coils: int = 4,
        phase: float = 0.0,
        coil_radius: float = 1.5,
        **mask_settings: object,
    ) -> None:
        super().__init__(image_shape, **mask_settings)  # type: ignore[arg-type]
        self.coils = check_int("operator.coils", coils, 1)
        self.phase = float(check_finite("operator.phase", phase))
        self.coil_radius = float(check_finite("operator.coil_radius", coil_radius))
        if self.coil_radius <= 1.0:
            raise ConfigError(
                "operator.coil_radius", coil_radius, "must be a number > 1 (the coils sit outside the image)"
            )
        shape = self.image_shape
        maps = np.ones((1, *shape), dtype=complex)
        if self.coils > 1:
            maps = birdcage_maps(shape, self.coils, self.coil_radius)
        if self.phase != 0.0:
            # Its own stream: the same phase for a given seed, whatever the mask rule drew.
            rng = np.random.default_rng([self.seed, 1])
            maps = maps * np.exp(1j * smooth_phase(shape, self.phase, rng))[None]
        self.register_buffer("maps", torch.from_numpy(maps.astype(np.complex64)), persistent=False)

    def _maps_like(self, values: Tensor) -> Tensor:
        complex_dtype = (
            torch.complex128 if values.dtype in (torch.float64, torch.complex128) else torch.complex64
        )
        return self.maps.to(device=values.device, dtype=complex_dtype)

    def _split(self, y: Tensor) -> Tensor:
        """(B, C * N, H, W) -> (B, C, N, H, W)."""
        return y.reshape(y.shape[0], -1, self.coils, *y.shape[-2:])

    def forward(self, x: Tensor) -> Tensor:
        weighted = x[:, :, None] * self._maps_like(x)
        kspace = torch.fft.fft2(weighted, norm="ortho") * self._mask_like(x)
        return kspace.reshape(x.shape[0], -1, *x.shape[-2:])

    def _coil_images(self, y: Tensor) -> Tensor:
        """conj(S_c) F^H M y_c summed over the coils: (B, C, H, W), complex."""
        images = torch.fft.ifft2(self._split(y) * self._mask_like(y), norm="ortho")
        return (images * self._maps_like(y).conj()).sum(dim=2)

    def adjoint(self, y: Tensor) -> Tensor:
        """Re(sum_c conj(S_c) F^H M y_c), the adjoint for the real inner product."""
        return self._coil_images(y).real

    def _combine(self, images: Tensor, like: Tensor) -> Tensor:
        weight = self._maps_like(like).abs().square().sum(dim=0).clamp_min(1e-12)
        return images.abs() / weight

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        """The zero-filled coil combination |sum_c conj(S_c) F^H M y_c| / sum_c |S_c|^2."""
        return self._combine(self._coil_images(y), y)

    def data_consistent(self, x: Tensor, y: Tensor) -> Tensor:
        """Every coil's measured lines put back into F(S_c x), then the coils combined."""
        with torch.no_grad():
            mask = self._mask_like(x)
            model = torch.fft.fft2(x[:, :, None] * self._maps_like(x), norm="ortho")
            kspace = model * (1 - mask) + self._split(y) * mask
            images = (torch.fft.ifft2(kspace, norm="ortho") * self._maps_like(x).conj()).sum(dim=2)
            return self._combine(images, x).to(x.dtype)

    def propagate_variance(self, variance: Tensor) -> Tensor:
        """E|delta y_c(k)|^2 = M sum_p |S_c(p)|^2 v(p) / (H W) for independent pixel variances."""
        height, width = variance.shape[-2:]
        power = self._maps_like(variance).abs().square().to(variance.dtype)
        total = (variance[:, :, None] * power).sum(dim=(-2, -1), keepdim=True) / (height * width)
        spread = total * self._mask_like(variance).square()
        return spread.reshape(variance.shape[0], -1, height, width)

    def measurement_image(self, y: Tensor) -> Tensor:
        """log(1 + root-sum-of-squares over the coils) of the centred k-space."""
        rss = self._split(y).abs().square().sum(dim=2).sqrt()
        return torch.log1p(torch.fft.fftshift(rss, dim=(-2, -1)))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, coils={self.coils}, phase={self.phase:g}"
