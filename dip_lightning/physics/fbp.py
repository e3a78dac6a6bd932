"""Filtered back-projection (FBP) for the geometries of :class:`~dip_lightning.physics.ct_geometry.CTGeometry`.

The ramp filter runs in torch (so FBP works batched, on any device and under autograd) and the
back-projection is the operator's own: for parallel beams it is the exact adjoint A^T, scaled so
that FBP of a noiseless sinogram approximates the image in value. For fan beams (flat detector,
full 2 pi scan) the textbook weighted FBP is used: cosine pre-weighting on a virtual detector
through the rotation centre, the same ramp filter, and a back-projection that interpolates along
each ray's footprint and weights it by 1 / U^2 (U: source-to-pixel distance along the central ray
over the source-origin distance). That back-projector is a second sparse matrix with the sparsity
of A^T (:func:`weighted_backprojection_matrix`), which the operator applies.

The operator is an argument (anything with a ``geometry``, an ``adjoint`` and a
``weighted_backprojection``), so this module does not depend on the operator's module.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from dip_lightning.errors import ConfigError, check_choice, check_positive
from dip_lightning.physics.ct_geometry import CTGeometry

__all__ = [
    "FILTERS",
    "BackProjector",
    "fbp",
    "filter_sinogram",
    "padded_length",
    "ramp_filter",
    "weighted_backprojection_matrix",
]

FILTERS = ("ram-lak", "shepp-logan", "cosine", "hann")


def padded_length(num_detectors: int) -> int:
    """Next power of two >= 2 * detectors: enough zero padding to avoid circular wrap-around."""
    return 1 << max(1, math.ceil(math.log2(2 * num_detectors)))


def ramp_filter(
    num_detectors: int,
    spacing: float,
    filter: str = "ram-lak",
    frequency_scaling: float = 1.0,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Frequency response (for ``torch.fft.rfft`` of the padded length) of the windowed ramp.

    The ramp is the transform of the sampled band-limited ramp kernel rather than |f| itself,
    which gets the zero-frequency term right (no DC offset). Windows follow the usual definitions
    with frequencies relative to Nyquist; everything above ``frequency_scaling`` * Nyquist is cut.
    """
    check_choice("operator.fbp_filter", filter, FILTERS)
    check_positive("operator.fbp_frequency_scaling", frequency_scaling)
    if frequency_scaling > 1.0:
        raise ConfigError("operator.fbp_frequency_scaling", frequency_scaling, "must lie in (0, 1]")
    length = padded_length(num_detectors)
    offsets = np.concatenate([np.arange(0, length // 2 + 1), np.arange(-length // 2 + 1, 0)])
    kernel = np.zeros(length)
    kernel[0] = 0.25 / spacing**2
    odd = offsets % 2 == 1
    kernel[odd] = -1.0 / (math.pi * offsets[odd] * spacing) ** 2
    response = np.real(np.fft.rfft(kernel)) * spacing
    relative = np.fft.rfftfreq(length) / 0.5  # 0 at DC, 1 at Nyquist
    scaled = relative / frequency_scaling
    if filter == "shepp-logan":
        response *= np.sinc(scaled / 2.0)
    elif filter == "cosine":
        response *= np.cos(0.5 * math.pi * scaled)
    elif filter == "hann":
        response *= np.cos(0.5 * math.pi * scaled) ** 2
    response[scaled > 1.0] = 0.0
    return torch.as_tensor(response, dtype=dtype, device=device)


def filter_sinogram(sinogram: Tensor, spacing: float, filter: str, frequency_scaling: float) -> Tensor:
    """Convolve every projection (last axis) with the windowed ramp via a zero-padded FFT."""
    detectors = sinogram.shape[-1]
    length = padded_length(detectors)
    real_dtype = sinogram.dtype if sinogram.dtype == torch.float64 else torch.float32
    response = ramp_filter(
        detectors, spacing, filter, frequency_scaling, device=sinogram.device, dtype=real_dtype
    )
    spectrum = torch.fft.rfft(sinogram.to(real_dtype), n=length, dim=-1)
    filtered = torch.fft.irfft(spectrum * response, n=length, dim=-1)[..., :detectors]
    return filtered.to(sinogram.dtype)


def _angular_weight(geometry: CTGeometry) -> float:
    """Angle step over how often each line is measured (once per pi of scan, at least once)."""
    step = geometry.angular_range / geometry.num_angles
    return step * math.pi / max(geometry.angular_range, math.pi)


def _pixel_centres(geometry: CTGeometry) -> tuple[np.ndarray, np.ndarray]:
    """x, y of the pixel centres in row-major order (row 0 at the top, as astra lays them out)."""
    height, width = geometry.shape
    xs = (np.arange(width) - (width - 1) / 2.0) * geometry.pixel_size
    ys = ((height - 1) / 2.0 - np.arange(height)) * geometry.pixel_size
    grid_x, grid_y = np.meshgrid(xs, ys)
    return grid_x.ravel(), grid_y.ravel()


def weighted_backprojection_matrix(matrix: sp.csr_matrix, geometry: CTGeometry) -> sp.csr_matrix:
    """The fan-beam FBP back-projector (H*W, A*D) with the sparsity of A^T.

    Entry (pixel, ray) is A's entry normalised so that, per angle, a pixel's weights over the
    detector sum to one (turning the footprint into an interpolation), times 1 / U^2.
    """
    num_angles, detectors = geometry.sinogram_shape
    num_pixels = matrix.shape[1]
    coo = matrix.tocoo()
    angle = coo.row // detectors
    slot = angle.astype(np.int64) * num_pixels + coo.col
    footprint = np.bincount(slot, weights=coo.data.astype(np.float64), minlength=num_angles * num_pixels)
    x, y = _pixel_centres(geometry)
    theta = geometry.angles[angle]
    distance = float(geometry.source_origin)  # type: ignore[arg-type]
    # astra puts the source at (d sin t, -d cos t): U is the depth along the central ray over d.
    depth = (distance - x[coo.col] * np.sin(theta) + y[coo.col] * np.cos(theta)) / distance
    with np.errstate(divide="ignore", invalid="ignore"):
        weights = np.where(footprint[slot] > 0, coo.data / footprint[slot], 0.0) / depth**2
    result = sp.csr_matrix(
        (weights.astype(np.float32), (coo.col, coo.row)), shape=(num_pixels, matrix.shape[0])
    )
    result.sort_indices()
    return result


class BackProjector(Protocol):
    """What FBP needs of a CT operator: its geometry and its two back-projections."""

    geometry: CTGeometry

    def adjoint(self, y: Tensor) -> Tensor:
        """A^T y for sinograms (B, C, num_angles, detector_count)."""
        ...

    def weighted_backprojection(self, y: Tensor) -> Tensor:
        """The fan-beam back-projector of :func:`weighted_backprojection_matrix` applied to y."""
        ...


def fbp(
    sinogram: Tensor,
    operator: BackProjector,
    filter: str = "ram-lak",
    frequency_scaling: float = 1.0,
) -> Tensor:
    """Reconstruct images (B, C, H, W) from sinograms (B, C, num_angles, detector_count).

    ``operator`` (a :class:`~dip_lightning.physics.ray_transform.RayTransform`) supplies the
    geometry and the back-projection. Fan-beam scans shorter than 2 pi are reconstructed without
    short-scan (Parker) weights and show artefacts.
    """
    check_choice("operator.fbp_filter", filter, FILTERS)
    geometry = operator.geometry
    expected = geometry.sinogram_shape
    if sinogram.dim() != 4 or tuple(sinogram.shape[-2:]) != expected:
        raise ValueError(
            f"fbp expects sinograms of shape (B, C, {expected[0]}, {expected[1]}), "
            f"got {tuple(sinogram.shape)}"
        )
    if geometry.beam == "parallel":
        filtered = filter_sinogram(sinogram, geometry.detector_spacing, filter, frequency_scaling)
        scale = _angular_weight(geometry) * geometry.detector_spacing / geometry.pixel_size**2
        return operator.adjoint(filtered) * scale
    return _fan_fbp(sinogram, operator, filter, frequency_scaling)


def _fan_fbp(sinogram: Tensor, operator: BackProjector, filter: str, frequency_scaling: float) -> Tensor:
    """Weighted FBP on the virtual detector through the rotation centre (flat detector)."""
    geometry = operator.geometry
    detectors = geometry.detector_count
    distance = float(geometry.source_origin)  # type: ignore[arg-type]
    spacing = geometry.detector_spacing / geometry.magnification
    positions = (torch.arange(detectors, dtype=torch.float64) - (detectors - 1) / 2.0) * spacing  # type: ignore[operator]
    cosine = (distance / torch.sqrt(distance**2 + positions**2)).to(sinogram.device, sinogram.dtype)
    filtered = filter_sinogram(sinogram * cosine, spacing, filter, frequency_scaling)
    return operator.weighted_backprojection(filtered) * _angular_weight(geometry)
