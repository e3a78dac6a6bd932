"""Noise level from the observation alone, for the discrepancy principle when it is not given.

Donoho's estimator: the finest diagonal wavelet details of a piecewise-smooth image are almost
all noise, and the median absolute value is robust to the few large ones at edges:
sigma = median(|HH|) / 0.6745, where 0.6745 is the median of |N(0, 1)|.

It assumes additive white Gaussian noise of one std on every element, and a measurement arranged
as an image (the last two axes are the 2D grid). Sinograms (angles x detector bins) work the same
way when treated as 2D arrays: they are smooth along both axes away from a few edges.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Median of |Z| for Z ~ N(0, 1).
MAD_TO_STD = 0.6745


def haar_diagonal_detail(x: Tensor) -> Tensor:
    """The HH subband of a one-level orthonormal 2D Haar transform over the last two axes.

    An odd last row or column is dropped. The transform is orthonormal, so white noise of std
    sigma stays white noise of std sigma in HH.
    """
    height, width = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    x = x[..., :height, :width]
    top_left, top_right = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    bottom_left, bottom_right = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    return (top_left - top_right - bottom_left + bottom_right) / 2.0


def estimate_noise_std(observation: Tensor) -> float:
    """Std of additive white Gaussian noise in ``observation`` (..., H, W), by wavelet MAD.

    Complex data are treated as their real and imaginary parts, each with that std.
    Raises ValueError when the last two axes are smaller than 2x2 or values are not finite.
    """
    x = observation.detach()
    if x.is_complex():
        x = torch.view_as_real(x).movedim(-1, 0)
    if x.dim() < 2 or x.shape[-2] < 2 or x.shape[-1] < 2:
        raise ValueError(
            "cannot estimate the noise level of a measurement of shape "
            f"{tuple(observation.shape)}: its last two axes must form a grid of at least 2x2"
        )
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("cannot estimate the noise level: the measurement contains NaN or infinite values")
    detail = haar_diagonal_detail(x)
    return float(detail.abs().flatten().median()) / MAD_TO_STD
