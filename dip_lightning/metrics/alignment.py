"""Quality metrics up to an integer shift, for problems that cannot fix the position of the image.

Blind deblurring is only defined up to a shift: moving the image by s pixels and the kernel by
-s explains the blurry image equally well. Following the comparison of Levin et al. (2009), used
by SelfDeblur, an estimate is scored at the integer shift within ``max_shift`` pixels that makes
its squared error against the truth smallest. Both images are compared on the truth's interior,
a border of ``max_shift`` pixels left out, so that every shift compares the same truth pixels.
(Levin et al.'s code also tries quarter-pixel shifts and leaves out a fixed 15-pixel border.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dip_lightning.errors import check_int
from dip_lightning.metrics.image import check_same_shape, psnr, ssim

__all__ = ["aligned_metrics", "best_shift", "kernel_psnr"]


def best_shift(image: Tensor, truth: Tensor, max_shift: int) -> tuple[int, int]:
    """The shift (rows, cols) of ``image`` within +-``max_shift`` with the least squared error on
    the truth's interior (the first such shift in row-major order on ties)."""
    check_same_shape(image, truth, ("image", "truth"))
    s = check_int("max_shift", max_shift, 0)
    height, width = truth.shape[-2:]
    if 2 * s >= min(height, width):
        raise ValueError(f"a shift of {s} pixels leaves nothing of a {height}x{width} image to compare")
    target = truth[..., s : height - s, s : width - s].double()
    source = image.double()
    best, where = None, (0, 0)
    for dy in range(-s, s + 1):
        for dx in range(-s, s + 1):
            window = source[..., s + dy : height - s + dy, s + dx : width - s + dx]
            error = float((window - target).square().sum())
            if best is None or error < best:
                best, where = error, (dy, dx)
    return where


def aligned_metrics(image: Tensor, truth: Tensor, max_shift: int) -> dict[str, float]:
    """PSNR and SSIM at the best integer shift (``psnr_aligned``, ``ssim_aligned``), the shift
    itself (``shift_rows``, ``shift_cols``: where the image's content sits relative to the truth)
    and the error's MSE there (``mse_aligned``, for error ratios)."""
    dy, dx = best_shift(image, truth, max_shift)
    s = int(max_shift)
    height, width = truth.shape[-2:]
    target = truth[..., s : height - s, s : width - s]
    window = image[..., s + dy : height - s + dy, s + dx : width - s + dx].to(target)
    return {
        "psnr_aligned": float(psnr(window, target).mean()),
        "ssim_aligned": float(ssim(window, target).mean()),
        "mse_aligned": float((window - target).double().square().mean()),
        "shift_rows": int(dy),
        "shift_cols": int(dx),
    }


def _pad_to(kernel: Tensor, side: int) -> Tensor:
    pad = (side - kernel.shape[-1]) // 2
    return F.pad(kernel, (pad, pad, pad, pad))


def kernel_psnr(estimate: Tensor, truth: Tensor) -> float:
    """PSNR (dB) of an estimated blur kernel against the true one, both (k, k) summing to one.

    The smaller kernel is zero-padded to the larger's side; the estimate is moved by the integer
    shift (within half the side, zeros shifted in) that fits the truth best, and the peak is the
    true kernel's maximum.
    """
    side = max(estimate.shape[-1], truth.shape[-1])
    a, b = _pad_to(estimate.double(), side), _pad_to(truth.double(), side)
    s = side // 2
    padded = F.pad(a, (s, s, s, s))
    best = None
    for dy in range(-s, s + 1):
        for dx in range(-s, s + 1):
            window = padded[s + dy : s + dy + side, s + dx : s + dx + side]
            error = float((window - b).square().mean())
            best = error if best is None else min(best, error)
    peak = float(b.max())
    return float(10.0 * torch.log10(torch.tensor(peak**2 / max(best, 1e-30))))
