"""Aligning an estimate with the truth over circular shifts (and, optionally, the flip x(-r)).

Some measurements cannot tell an image from its translates or from its point reflection: the
Fourier magnitude of an image zero-padded to a larger grid is the same for every circular shift
of the padded image and for x(-r) (whose transform is the complex conjugate). Scoring an estimate
of such a problem against the truth first moves it to the candidate closest to the truth.

The search is exact and costs a few FFTs: on the padded grid a circular shift preserves ||e||, so
the shift of least squared error is the one of largest cross-correlation <e shifted, t>, which
one FFT product gives for every shift at once; for the flip, the transform of e(-r) is conj(E),
so a second product covers the flipped candidates. The shift is shared by the channels of an
image and chosen per image of the batch. Everything stays on the device (no host sync), and the
found transform is returned as a function so that the same move applies to variance maps.

Example:
    >>> import torch
    >>> truth = torch.zeros(1, 1, 8, 8); truth[..., 1:4, 2:6] = torch.rand(1, 1, 3, 4)
    >>> moved = torch.roll(truth.flip(-2, -1), (2, 1), dims=(-2, -1))
    >>> bool(torch.equal(circular_alignment(moved, truth, (16, 16), flip=True)(moved), truth))
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["circular_alignment"]


def _padded(image: Tensor, shape: tuple[int, int]) -> Tensor:
    """``image`` in the top-left corner of a zero grid of ``shape``."""
    height, width = image.shape[-2:]
    return F.pad(image, (0, shape[1] - width, 0, shape[0] - height))


def circular_alignment(
    estimate: Tensor, truth: Tensor, padded_shape: tuple[int, int], *, flip: bool = True
) -> Callable[[Tensor], Tensor]:
    """The circular shift (and flip) of the ``padded_shape`` grid that best matches ``estimate``
    (B, C, H, W) to ``truth`` (1 or B, C, H, W), as a function on (B, C, H, W) tensors.

    Both images sit in the top-left H x W box of the padded grid; the returned function shifts
    (and flips) a tensor there and crops the box back. ``flip`` adds the candidates x(-r), the
    point reflection through the grid's origin, modulo the grid.
    """
    rows, cols = padded_shape
    height, width = estimate.shape[-2:]
    if rows < height or cols < width:
        raise ValueError(f"the padded grid {padded_shape} is smaller than the images {(height, width)}")
    with torch.no_grad():
        work = torch.float64 if estimate.dtype == torch.float64 else torch.float32
        spectrum = torch.fft.fft2(_padded(estimate.detach().to(work), padded_shape))
        target = torch.fft.fft2(_padded(truth.detach().to(work), padded_shape))
        # direct[s] = sum_r e(r) t(r + s): e moved by +s; flipped[s] the same for e(-r).
        candidates = [torch.fft.ifft2(spectrum.conj() * target).real.sum(dim=1)]
        if flip:
            candidates.append(torch.fft.ifft2(spectrum * target).real.sum(dim=1))
        scores = torch.stack(candidates, dim=1).flatten(start_dim=1)  # (B, 2 R C) or (B, R C)
        best = scores.argmax(dim=1)
        flipped = best // (rows * cols) == 1
        shift = best % (rows * cols)
        shift_row, shift_col = shift // cols, shift % cols
        out_rows = torch.arange(height, device=estimate.device)
        out_cols = torch.arange(width, device=estimate.device)
        # Output pixel m takes e(m - s) unflipped, e(s - m) flipped (indices modulo the grid).
        sign = torch.where(flipped, -1, 1)[:, None]
        source_rows = (sign * (out_rows[None] - shift_row[:, None])) % rows  # (B, H)
        source_cols = (sign * (out_cols[None] - shift_col[:, None])) % cols  # (B, W)

    def move(image: Tensor) -> Tensor:
        padded = _padded(image, padded_shape)
        batch = torch.arange(image.shape[0], device=image.device)[:, None, None, None]
        channel = torch.arange(image.shape[1], device=image.device)[None, :, None, None]
        return padded[
            batch,
            channel,
            source_rows.to(image.device)[:, None, :, None],
            source_cols.to(image.device)[:, None, None, :],
        ]

    return move
