"""Undersampled Fourier measurements (Cartesian MRI): y = M (F x), complex valued.

F is the orthonormal 2D FFT of each channel (``norm="ortho"``: unitary, so white image noise stays
white in k-space with the same variance) and M a 0/1 mask of whole k-space rows (phase-encoding
lines, each read out over all frequencies of the other axis). The measurement keeps the full
(B, C, H, W) k-space grid, in FFT order (frequency 0 first), with zeros where nothing is sampled.

The mask is drawn from a seed: the 2r + 1 lines of lowest frequency |f| <= r are always sampled,
r = floor(center_fraction * H / 2); then, in a seeded random order, each pair of lines {f, -f}
(and the Nyquist line -H/2 on its own) is added if it brings the count closer to
round(H / acceleration). Sampling f and -f together
makes M conjugate-symmetric, so for real images A^T A = F^H M F is an orthogonal projection:
A is a partial isometry and its pseudo-inverse is its adjoint, the zero-filled inverse FFT
Re(F^H M y). ``pseudo_inverse`` uses that closed form (CGLS, the generic fallback, agrees).

That is the default rule (``mask=mirrored``, ``lines=rows``). ``mask=random`` and
``mask=equispaced`` draw the lines by fastMRI's rules instead, and ``lines=columns`` samples
whole columns (see :mod:`dip_lightning.physics.kspace_masks`); ``task=mri`` uses random columns.
Those masks are not conjugate-symmetric: a line read without its mirror image still gives it for a
real image, and the pseudo-inverse weighs such lines twice (see :meth:`MaskedFourier.pseudo_inverse`).

With images real and measurements complex, the adjoint is that of the real inner product
Re<u, v> (see :mod:`dip_lightning.physics.base`). Each entry of F has |F_kj|^2 = 1 / (H W), so
independent pixel variances v give the k-space variance M sum(v) / (H W) at every sampled entry.

Example:
    >>> import torch
    >>> op = MaskedFourier((32, 32), acceleration=4, center_fraction=0.08, seed=0)
    >>> op.sampled_lines, op(torch.rand(1, 1, 32, 32)).dtype
    (8, torch.complex64)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from dip_lightning.errors import ConfigError, check_choice, check_finite, check_in_range, check_int
from dip_lightning.physics.base import ForwardOperator
from dip_lightning.physics.kspace_masks import (
    MASK_KINDS,
    default_center_fraction,
    hermitian_weights,
    line_mask,
)
from dip_lightning.physics.kspace_masks import mirrored_line_mask as cartesian_line_mask

__all__ = ["LINE_AXES", "MaskedFourier", "cartesian_line_mask"]

LINE_AXES: tuple[str, ...] = ("rows", "columns")


class MaskedFourier(ForwardOperator):
    """y = M (F x): the orthonormal 2D FFT of each channel, sampled on Cartesian k-space lines.

    Args:
        image_shape: (H, W) of the images; the mask has this shape.
        acceleration: lines over the number of sampled lines, >= 1 (1: fully sampled).
        center_fraction: fraction of the lines, around frequency 0, that are always sampled, in
            [0, 1]; null: fastMRI's pairing 0.32 / acceleration (0.08 at 4x, 0.04 at 8x).
        seed: seed of the mask (independent of the noise seed).
        mask: the sampling rule, one of :data:`~dip_lightning.physics.kspace_masks.MASK_KINDS`:
            ``mirrored`` (the rule above, conjugate-symmetric, exact count), ``random`` or
            ``equispaced`` (fastMRI's ``RandomMaskFunc`` and ``EquispacedMaskFunc``).
        lines: ``rows`` (whole rows sampled, the mask varies along H) or ``columns`` (whole
            columns, along W: the fastMRI layout).
    """

    def __init__(
        self,
        image_shape: tuple[int, int] | None,
        acceleration: float = 4.0,
        center_fraction: float | None = 0.08,
        seed: int = 0,
        mask: str = "mirrored",
        lines: str = "rows",
    ) -> None:
        super().__init__()
        if image_shape is None:
            raise ConfigError(
                "operator.image_shape", None, "must be given as (H, W) when the operator is built"
            )
        self.lines = str(check_choice("operator.lines", lines, LINE_AXES))
        self.mask_kind = str(check_choice("operator.mask", mask, MASK_KINDS))
        along = 0 if self.lines == "rows" else 1
        shape = (
            check_int("operator.image_shape", image_shape[0], 2 if along == 0 else 1),
            check_int("operator.image_shape", image_shape[1], 2 if along == 1 else 1),
        )
        acceleration = float(check_finite("operator.acceleration", acceleration))
        if acceleration < 1.0:
            raise ConfigError(
                "operator.acceleration", acceleration, "must be a number >= 1 (1: fully sampled)"
            )
        if center_fraction is None:
            center_fraction = default_center_fraction(acceleration)
        self.center_fraction = float(
            check_in_range("operator.center_fraction", center_fraction, 0.0, 1.0, high_open=False)
        )
        self.acceleration = acceleration
        self.seed = check_int("operator.seed", seed, 0)
        sampled = line_mask(
            self.mask_kind,
            shape[along],
            acceleration,
            self.center_fraction,
            np.random.default_rng(self.seed),
        )
        weights = hermitian_weights(sampled)
        per_line = torch.from_numpy(np.stack([sampled.astype(np.float32), weights.astype(np.float32)]))
        per_line = per_line[:, :, None] if along == 0 else per_line[:, None, :]
        grids = per_line.expand(2, *shape).contiguous()
        self.register_buffer("mask", grids[0][None, None], persistent=False)
        # For real images, a line read on one side of frequency 0 also gives its mirror image:
        # the weights make the zero-filled inverse the exact pseudo-inverse (see pseudo_inverse).
        self.register_buffer("pinv_weights", (grids[1] * grids[0])[None, None], persistent=False)
        self.image_shape = shape
        self._along = along

    @property
    def sampled_lines(self) -> int:
        """Number of sampled k-space rows."""
        line = self.mask[0, 0, :, 0] if self._along == 0 else self.mask[0, 0, 0, :]
        return int(line.sum())

    @property
    def sampled_fraction(self) -> float:
        """Fraction of k-space that is sampled (1 / the achieved acceleration)."""
        return float(self.mask.mean())

    def check_image_shape(self, image_shape: tuple[int, int]) -> None:
        shape = (int(image_shape[0]), int(image_shape[1]))
        if shape != self.image_shape:
            raise ConfigError(
                "operator.image_shape",
                shape,
                f"this Fourier operator's mask was built for images of shape {self.image_shape}",
            )

    def _mask_like(self, values: Tensor) -> Tensor:
        real = values.real.dtype if values.is_complex() else values.dtype
        return self.mask.to(device=values.device, dtype=real)

    def forward(self, x: Tensor) -> Tensor:
        """Sampled k-space (B, C, H, W), complex, zero where nothing is sampled."""
        return torch.fft.fft2(x, norm="ortho") * self._mask_like(x)

    def adjoint(self, y: Tensor) -> Tensor:
        """Re(F^H M y): the adjoint for the real inner product, a real image."""
        return torch.fft.ifft2(y * self._mask_like(y), norm="ortho").real

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        """The zero-filled inverse FFT Re(F^H W M y), the exact A^+ y for real images.

        W is 1 on lines read together with their mirror image and 2 on lines read alone: for a
        real image the Fourier coefficient at -f is the conjugate of that at f, so a line read on
        one side is known on both, and Re(.) of the zero-filled inverse would count it only half.
        For the conjugate-symmetric ``mirrored`` mask W = 1 and this is the adjoint.
        """
        weights = self.pinv_weights.to(device=y.device, dtype=y.real.dtype if y.is_complex() else y.dtype)
        return torch.fft.ifft2(y * weights, norm="ortho").real

    def propagate_variance(self, variance: Tensor) -> Tensor:
        """|A|^2 v = M sum(v) / (H W) per channel: E|delta y_k|^2 for independent pixel variances."""
        height, width = variance.shape[-2:]
        total = variance.sum(dim=(-2, -1), keepdim=True) / (height * width)
        mask = self._mask_like(variance)
        return total * mask.square()

    def measurement_image(self, y: Tensor) -> Tensor:
        """log(1 + |y|) of the k-space with frequency 0 in the centre (fftshift)."""
        return torch.log1p(torch.fft.fftshift(y.abs(), dim=(-2, -1)))

    def extra_repr(self) -> str:
        return (
            f"image_shape={self.image_shape}, acceleration={self.acceleration:g}, "
            f"center_fraction={self.center_fraction:g}, mask={self.mask_kind}, lines={self.lines}, "
            f"sampled_lines={self.sampled_lines}"
        )
