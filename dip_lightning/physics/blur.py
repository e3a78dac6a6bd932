r"""Deblurring with a known kernel: y = k * x, with a ``valid`` or a ``circular`` boundary.

The kernel k (odd side K = 2p + 1, non-negative, summing to one; see :mod:`kernels`) blurs every
channel alike, as a true convolution (the kernel flipped, so that ``k`` is the point spread
function as it is drawn).

* ``valid`` (default): the measurement holds only the (H - K + 1) x (W - K + 1) pixels whose
  whole neighbourhood lies in the image, as a camera sees the inside of a larger scene. Nothing is
  assumed about the scene outside the picture; the network's border pixels are constrained by the
  measurement less than its inside. This is SelfDeblur's model (its network draws an image K - 1
  pixels larger than the blurry one). The adjoint is the transposed convolution.
* ``circular``: the image wraps around (y has the image's size). A real photograph is not
  periodic, so fitting a circular model to one puts the opposite edge's content into each border;
  it suits simulated data and gives the closed-form Wiener baseline.

``pseudo_inverse`` (the baseline, and the network input with ``method.input.kind=pseudo_inverse``)
is ``baseline``: ``wiener`` minimises ||k * x - y||^2 + wiener_nsr ||x - x0||^2 (circular: the
Wiener filter, x0 = 0, in closed form by the FFT; ``valid``: by CGLS, x0 the edge-replicated
blurry image, since a pull towards zero darkens the border pixels the measurement hardly sees),
or ``blurry``, the blurry image itself (edge-replicated to the image's size for ``valid``).

Example:
    >>> import torch
    >>> op = Blur(kernel="gaussian", kernel_size=5, gaussian_sigma=1.0)
    >>> op(torch.rand(1, 1, 32, 32)).shape
    torch.Size([1, 1, 28, 28])
    >>> op.pseudo_inverse(torch.rand(1, 1, 28, 28)).shape
    torch.Size([1, 1, 32, 32])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dip_lightning.errors import ConfigError, InputFileError, check_choice, check_int, check_positive
from dip_lightning.metrics.alignment import aligned_metrics
from dip_lightning.physics.base import ForwardOperator
from dip_lightning.physics.kernels import make_kernel

__all__ = ["BASELINES", "BOUNDARIES", "Blur", "blur", "blur_adjoint", "check_kernel_fits"]

BOUNDARIES = ("valid", "circular")
BASELINES = ("wiener", "blurry")
WIENER_CGLS_ITERATIONS = 200


def _weights(kernel: Tensor, like: Tensor) -> Tensor:
    side = kernel.shape[-1]
    return kernel.to(like).reshape(1, 1, side, side).expand(like.shape[1], 1, side, side)


def blur(x: Tensor, kernel: Tensor, boundary: str) -> Tensor:
    """k * x (true convolution) of every channel of ``x`` (B, C, H, W) with the (K, K) ``kernel``."""
    p = kernel.shape[-1] // 2
    if boundary == "circular":
        x = F.pad(x, (p, p, p, p), mode="circular")
    return F.conv2d(x, _weights(kernel.flip(-2, -1), x), groups=x.shape[1])


def blur_adjoint(y: Tensor, kernel: Tensor, boundary: str) -> Tensor:
    """The exact adjoint of :func:`blur`: correlation with the kernel."""
    p = kernel.shape[-1] // 2
    if boundary == "circular":
        return F.conv2d(F.pad(y, (p, p, p, p), mode="circular"), _weights(kernel, y), groups=y.shape[1])
    return F.conv_transpose2d(y, _weights(kernel.flip(-2, -1), y), groups=y.shape[1])


def check_kernel_fits(kernel_side: int, image_shape: tuple[int, int], setting: str, value: object) -> None:
    """Refuse a kernel larger than the image (the blur would leave no pixel to measure)."""
    height, width = (int(s) for s in image_shape)
    if kernel_side > min(height, width):
        raise ConfigError(
            setting,
            value,
            f"the {kernel_side}x{kernel_side} kernel is larger than the {height}x{width} image "
            f"(height x width); use a smaller kernel or a larger image (data.size)",
        )


def transfer_function(kernel: Tensor, image_shape: tuple[int, int]) -> Tensor:
    """The 2-D DFT of the kernel centred on pixel (0, 0) of an image of ``image_shape``."""
    side, p = kernel.shape[-1], kernel.shape[-1] // 2
    spread = torch.zeros(image_shape, dtype=kernel.dtype, device=kernel.device)
    spread[:side, :side] = kernel
    return torch.fft.fft2(torch.roll(spread, shifts=(-p, -p), dims=(0, 1)))


class Blur(ForwardOperator):
    """Blur with a known kernel (see the module docstring).

    Args:
        kernel: ``motion`` (a seeded camera-shake kernel), ``gaussian``, ``disk`` or ``file``.
        kernel_size: the kernel's odd side in pixels (a file kernel has its own).
        kernel_seed: the seed of the motion kernel.
        gaussian_sigma, disk_radius, motion_extent: the shape of each kind (see :mod:`kernels`).
        kernel_path: an ``.npy`` or grey ``.png`` kernel, for ``kernel=file``.
        boundary: ``valid`` (default) or ``circular``.
        baseline: ``wiener`` or ``blurry`` (the pseudo-inverse).
        wiener_nsr: the weight of ||x||^2 in the Wiener baseline (a noise-to-signal power ratio).
        max_shift: the largest shift the shift-aligned metrics try (None: the kernel's radius).
        image_shape: (H, W), checked against the kernel when given.
    """

    def __init__(
        self,
        kernel: str = "motion",
        kernel_size: int = 13,
        kernel_seed: int = 0,
        gaussian_sigma: float = 2.0,
        disk_radius: float | None = None,
        motion_extent: float = 0.8,
        kernel_path: str | None = None,
        boundary: str = "valid",
        baseline: str = "wiener",
        wiener_nsr: float = 0.1,
        max_shift: int | None = None,
        image_shape: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.boundary = str(check_choice("operator.boundary", boundary, BOUNDARIES))
        self.baseline = str(check_choice("operator.baseline", baseline, BASELINES))
        self.wiener_nsr = float(check_positive("operator.wiener_nsr", wiener_nsr, allow_zero=True))
        self.kernel_kind = kernel
        try:
            true_kernel = make_kernel(
                kernel, kernel_size, kernel_seed, gaussian_sigma, disk_radius, motion_extent, kernel_path
            )
        except InputFileError as error:
            raise error.for_setting("kernel_path") from None
        self.kernel_setting = "operator.kernel_path" if kernel == "file" else "operator.kernel_size"
        self.kernel_side = int(true_kernel.shape[-1])
        self.register_buffer("kernel", true_kernel.to(torch.float32))
        radius = self.kernel_side // 2
        self.max_shift = radius if max_shift is None else check_int("operator.max_shift", max_shift, 0)
        self.image_shape = None
        if image_shape is not None:
            self.check_image_shape(tuple(image_shape))
            self.image_shape = (int(image_shape[0]), int(image_shape[1]))
        self.cgls_damping = self.wiener_nsr
        self.cgls_iterations = WIENER_CGLS_ITERATIONS

    # ------------------------------------------------------------------ the kernel in use
    def current_kernel(self) -> Tensor:
        """The kernel ``forward`` blurs with: the true one here, the estimate for blind deblurring."""
        return self.kernel

    def check_image_shape(self, image_shape: tuple[int, int]) -> None:
        value = self.kernel_side if self.kernel_kind != "file" else None
        check_kernel_fits(self.kernel_side, image_shape, self.kernel_setting, value or "(file kernel)")
        if 2 * self.max_shift >= min(int(s) for s in image_shape):
            raise ConfigError(
                "operator.max_shift",
                self.max_shift,
                f"must be under half the image's side ({min(image_shape)} px) to leave pixels to compare",
            )

    def forward(self, x: Tensor) -> Tensor:
        return blur(x, self.current_kernel(), self.boundary)

    def adjoint(self, y: Tensor) -> Tensor:
        return blur_adjoint(y, self.current_kernel(), self.boundary)

    def propagate_variance(self, variance: Tensor) -> Tensor:
        return blur(variance, self.current_kernel().square(), self.boundary)

    # ------------------------------------------------------------------ baseline
    def blurry_image(self, y: Tensor) -> Tensor:
        """The blurry measurement at the image's size (edges replicated for ``valid``)."""
        if self.boundary == "circular":
            return y
        p = self.kernel_side // 2
        return F.pad(y, (p, p, p, p), mode="replicate")

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        if self.baseline == "blurry":
            return self.blurry_image(y).detach()
        if self.boundary == "valid":
            # CGLS on ||k * x - y||^2 + nsr ||x - x0||^2 around the edge-replicated blurry image
            # x0: the border pixels the measurement hardly sees stay near it instead of near zero.
            start = self.blurry_image(y).detach()
            with torch.no_grad():
                return start + super().pseudo_inverse(y - self(start))
        with torch.no_grad():
            transfer = transfer_function(self.current_kernel().double(), tuple(y.shape[-2:]))
            spectrum = torch.fft.fft2(y.double())
            estimate = spectrum * transfer.conj() / (transfer.abs().square() + self.wiener_nsr)
            return torch.fft.ifft2(estimate).real.to(y.dtype)

    # ------------------------------------------------------------------ metrics
    def image_metrics(self, image: Tensor, ground_truth: Tensor) -> dict[str, float]:
        """PSNR and SSIM after the best integer shift within ``max_shift`` pixels (see
        :mod:`dip_lightning.metrics.alignment`): comparable with the blind problem's."""
        return aligned_metrics(image, ground_truth.to(image), self.max_shift)

    def extra_repr(self) -> str:
        return (
            f"kernel={self.kernel_kind!r}, side={self.kernel_side}, boundary={self.boundary!r}, "
            f"baseline={self.baseline!r}, image_shape={self.image_shape}"
        )
