"""Image-quality metrics (PSNR, SSIM) on batches of images in [0, data_range].

Images are tensors of shape (B, C, H, W). The torchmetrics-based functions return one value per
image so that a batch of reconstructions can be reported image by image; ``fast_psnr`` is the
cheap per-step variant that never leaves the device.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from dip_lightning.errors import check_positive

__all__ = ["check_same_shape", "fast_psnr", "psnr", "ssim"]

# The standard SSIM window (Wang et al. 2004): an 11-pixel Gaussian with sigma 1.5.
_SSIM_KERNEL = 11
_SSIM_SIGMA = 1.5


def check_same_shape(a: Tensor, b: Tensor, names: tuple[str, str] = ("pred", "target")) -> None:
    """Raise ValueError naming both shapes; silent broadcasting would give a wrong metric."""
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def _check_images(pred: Tensor, target: Tensor, data_range: float) -> None:
    """Validate a (B, C, H, W) pair and the data range shared by psnr and ssim."""
    check_same_shape(pred, target)
    if pred.ndim != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(pred.shape)}")
    if pred.numel() == 0:
        raise ValueError(f"images must not be empty, got shape {tuple(pred.shape)}")
    check_positive("metrics.data_range", data_range)


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB of each image, shape (B,).

    ``pred`` is not clamped to [0, data_range]: a network that overshoots the valid range is
    reported with the error it really makes. Identical images give ``inf``.
    """
    _check_images(pred, target, data_range)
    return peak_signal_noise_ratio(
        pred, target, data_range=float(data_range), reduction="none", dim=(1, 2, 3)
    )


def fast_psnr(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """PSNR as a 0-d tensor on the input's device, for logging at every optimisation step.

    Pure torch with no host synchronisation. A (B, C, H, W) input gives the mean of the
    per-image PSNRs (equal to ``psnr(...).mean()``); any other shape is treated as one image.
    """
    check_same_shape(pred, target)
    check_positive("metrics.data_range", data_range)
    diff = (pred.detach() - target.detach()).float()
    # One MSE per image for a batch, so that the result equals psnr(...).mean().
    mse = diff.square().flatten(start_dim=1).mean(dim=1) if diff.ndim == 4 else diff.square().mean()
    return (20.0 * math.log10(data_range) - 10.0 * torch.log10(mse)).mean()


def _ssim_window(height: int, width: int) -> tuple[int, float]:
    """Largest odd window (at most 11 px) that fits the image, with sigma scaled to match.

    Keeping the kernel no larger than the image (as scikit-image requires) lets tiny test
    images and patches be scored instead of failing inside the reflect padding.
    """
    side = min(height, width, _SSIM_KERNEL)
    kernel = side if side % 2 == 1 else side - 1
    return kernel, _SSIM_SIGMA * kernel / _SSIM_KERNEL


def ssim(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """Structural similarity of each image, shape (B,), with a Gaussian window.

    Images smaller than the standard 11-px window use a smaller odd window (see
    ``_ssim_window``), so values for such images are not comparable with full-size ones.
    """
    _check_images(pred, target, data_range)
    kernel, sigma = _ssim_window(pred.shape[-2], pred.shape[-1])
    return structural_similarity_index_measure(
        pred,
        target.to(pred.dtype),
        gaussian_kernel=True,
        sigma=sigma,
        kernel_size=kernel,
        reduction="none",
        data_range=float(data_range),
    )
