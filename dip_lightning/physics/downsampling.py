r"""Anti-aliased downsampling by an integer factor, for super-resolution.

The operator blurs each channel with a separable low-pass kernel k and keeps every f-th pixel:
y = (k * x)[f i, f j] with zero padding, implemented as ``F.conv2d(x, k, stride=f, padding=p,
groups=C)``. Its adjoint is ``F.conv_transpose2d`` with the same kernel, stride and padding, so
<A x, y> = <x, A^T y> holds to rounding error. Zero padding (rather than the replication padding of
the original DIP code) keeps every tap on a distinct pixel, which makes ``propagate_variance``
(the same convolution with the squared kernel) exact as well.

Kernels (1-D taps t_i, in low-resolution pixel units, centred between the two middle taps like the
DIP code's ``phase=0.5``; the 2-D kernel is the outer product, normalised to sum 1):

* ``lanczos2`` / ``lanczos3`` (a = 2 / 3): K = 2 a f taps at t_i = (i - (K - 1) / 2) / f,
  i = 0..K-1, with weights L_a(t) = sinc(t) sinc(t / a) for |t| < a, sinc(t) = sin(pi t) / (pi t).
  This is the kernel of the DIP paper's ``Downsampler(kernel_type='lanczos2')``.
* ``box``: K = f taps of 1 / f (plain f x f averaging; no padding).
* ``gauss``: K = 4 f taps at u_i = i - (K - 1) / 2 high-resolution pixels with weights
  exp(-u^2 / (2 s^2)), s = f / 2.

The padding is p = (K - f) / 2 on every side, so an H x W image gives an (H/f) x (W/f) measurement.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dip_lightning.errors import ConfigError, check_choice
from dip_lightning.physics.base import ForwardOperator

__all__ = ["FACTORS", "KERNELS", "Downsampling", "downsampling_kernel_1d"]

FACTORS = (2, 4, 8)
KERNELS = ("lanczos2", "lanczos3", "box", "gauss")


def _sinc(t: Tensor) -> Tensor:
    return torch.sinc(t)  # sin(pi t) / (pi t), 1 at 0


def downsampling_kernel_1d(factor: int, kernel: str) -> Tensor:
    """The normalised 1-D taps (float64) of the anti-aliasing kernel; see the module docstring."""
    if kernel in ("lanczos2", "lanczos3"):
        a = int(kernel[-1])
        size = 2 * a * factor
        t = (torch.arange(size, dtype=torch.float64) - (size - 1) / 2) / factor
        taps = _sinc(t) * _sinc(t / a) * (t.abs() < a)
    elif kernel == "box":
        taps = torch.ones(factor, dtype=torch.float64)
    elif kernel == "gauss":
        size = 4 * factor
        u = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
        s = factor / 2
        taps = torch.exp(-(u**2) / (2 * s**2))
    else:
        check_choice("operator.kernel", kernel, KERNELS)
        raise AssertionError("unreachable")
    return taps / taps.sum()


class Downsampling(ForwardOperator):
    """y = S_f (k * x): low-pass filter then keep every ``factor``-th row and column.

    Args:
        factor: the downsampling factor, 2, 4 or 8. Image height and width must be multiples of it.
        kernel: ``lanczos2`` (default, as in DIP and MFVI-DIP), ``lanczos3``, ``box`` or ``gauss``.
        image_shape: (H, W) of the high-resolution image, if fixed by the task (checked only for
            divisibility here).

    Example:
        >>> import torch
        >>> op = Downsampling(factor=2)
        >>> op(torch.rand(1, 3, 32, 48)).shape
        torch.Size([1, 3, 16, 24])
        >>> op.pseudo_inverse(torch.rand(1, 3, 16, 24)).shape
        torch.Size([1, 3, 32, 48])
    """

    def __init__(
        self, factor: int = 2, kernel: str = "lanczos2", image_shape: tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        check_choice("operator.factor", factor, FACTORS)
        check_choice("operator.kernel", kernel, KERNELS)
        self.factor = int(factor)
        self.kernel_name = kernel
        taps = downsampling_kernel_1d(self.factor, kernel)
        self.kernel_size = taps.numel()
        self.padding = (self.kernel_size - self.factor) // 2
        assert 2 * self.padding == self.kernel_size - self.factor
        kernel_2d = torch.outer(taps, taps)
        self.register_buffer("kernel", kernel_2d.to(torch.float32)[None, None], persistent=False)
        self.register_buffer(
            "kernel_squared", kernel_2d.square().to(torch.float32)[None, None], persistent=False
        )
        self.image_shape = None
        if image_shape is not None:
            shape = (int(image_shape[0]), int(image_shape[1]))
            self.check_image_shape(shape)
            self.image_shape = shape

    def check_image_shape(self, image_shape: tuple[int, int]) -> None:
        height, width = (int(s) for s in image_shape)
        bad = [
            f"{name} {size}" for name, size in (("height", height), ("width", width)) if size % self.factor
        ]
        if bad or height <= 0 or width <= 0:
            raise ConfigError(
                "operator.factor",
                self.factor,
                f"the image is {height}x{width} (height x width) and its {' and '.join(bad) or 'size'} "
                f"is not a positive multiple of {self.factor}; crop or resize the image "
                f"(e.g. data.size) or choose another factor",
            )

    def _weights(self, buffer: Tensor, x: Tensor) -> Tensor:
        channels = x.shape[1]
        return buffer.to(device=x.device, dtype=x.dtype).expand(channels, 1, -1, -1)

    def _conv(self, x: Tensor, buffer: Tensor) -> Tensor:
        return F.conv2d(
            x, self._weights(buffer, x), stride=self.factor, padding=self.padding, groups=x.shape[1]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self._conv(x, self.kernel)

    def adjoint(self, y: Tensor) -> Tensor:
        f, k, p = self.factor, self.kernel_size, self.padding
        out_pad = [f * n - ((n - 1) * f - 2 * p + k) for n in y.shape[-2:]]  # 0 for these kernels
        return F.conv_transpose2d(
            y, self._weights(self.kernel, y), stride=f, padding=p, output_padding=out_pad, groups=y.shape[1]
        )

    def propagate_variance(self, variance: Tensor) -> Tensor:
        return self._conv(variance, self.kernel_squared)

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        """Bicubic upsampling (``align_corners=False``) to the full size."""
        size = (y.shape[-2] * self.factor, y.shape[-1] * self.factor)
        return F.interpolate(y, size=size, mode="bicubic", align_corners=False)

    def extra_repr(self) -> str:
        return (
            f"factor={self.factor}, kernel={self.kernel_name!r}, taps={self.kernel_size}, "
            f"padding={self.padding}, image_shape={self.image_shape}"
        )
