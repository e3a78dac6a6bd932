"""Numerical checks every forward operator must pass, usable from any operator's tests.

The adjoint check is the dot-product test: for random x and y, <A x, y> must equal <x, A^T y>.
Measurements may be complex; the inner product of the measurement space is then the real one,
Re<u, v> = sum Re(u_i conj(v_i)), for which ``adjoint`` is defined (images are real), so a complex
element counts as two real ones, as in the discrepancy principle.

Example:
    >>> from dip_lightning.physics.identity import Identity
    >>> adjoint_relative_error(Identity(), (8, 8)) < 1e-12
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dip_lightning.physics.base import ForwardOperator

__all__ = ["AdjointCheck", "adjoint_check", "adjoint_relative_error", "real_inner"]


def real_inner(first: Tensor, second: Tensor) -> float:
    """Re<first, second> = sum Re(first_i conj(second_i)) in float64 (the plain sum for real tensors)."""
    if first.is_complex() or second.is_complex():
        product = (first.to(torch.complex128) * second.to(torch.complex128).conj()).real
    else:
        product = first.to(torch.float64) * second.to(torch.float64)
    return float(product.sum())


@dataclass(frozen=True)
class AdjointCheck:
    """Both sides of the dot-product test and their relative difference."""

    forward_side: float
    adjoint_side: float

    @property
    def relative_error(self) -> float:
        """|<Ax, y> - <x, A^T y>| / max(|<Ax, y>|, |<x, A^T y>|) (0 when both are 0)."""
        scale = max(abs(self.forward_side), abs(self.adjoint_side))
        return abs(self.forward_side - self.adjoint_side) / scale if scale > 0 else 0.0


def adjoint_check(
    operator: ForwardOperator,
    image_shape: tuple[int, int],
    channels: int = 1,
    *,
    batch: int = 2,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> AdjointCheck:
    """Dot-product test of ``operator`` on standard normal x (B, C, H, W) and y (complex if A x is).

    Runs under ``torch.no_grad`` (operators may hold trainable parameters) on the operator's
    device, in ``dtype`` (float64 by default, so that rounding stays far below any bug). A
    non-linear operator (``linear = False``) has no adjoint and is refused with a ValueError.
    """
    if not operator.linear:
        raise ValueError(f"{type(operator).__name__} is not linear: the dot-product test does not apply")
    generator = torch.Generator().manual_seed(int(seed))
    device = operator._device()
    with torch.no_grad():
        x = torch.randn(batch, channels, *image_shape, generator=generator, dtype=dtype)
        x = x.to(device)
        ax = operator(x)
        if ax.is_complex():
            y = torch.randn(ax.shape, generator=generator, dtype=ax.dtype)
        else:
            y = torch.randn(ax.shape, generator=generator, dtype=dtype)
        y = y.to(device)
        aty = operator.adjoint(y)
    if aty.shape != x.shape:
        raise AssertionError(
            f"adjoint returned shape {tuple(aty.shape)} for images of shape {tuple(x.shape)}"
        )
    if aty.is_complex():
        raise AssertionError("adjoint returned a complex image; it must be real (the adjoint for Re<.,.>)")
    return AdjointCheck(forward_side=real_inner(ax, y), adjoint_side=real_inner(x, aty))


def adjoint_relative_error(
    operator: ForwardOperator, image_shape: tuple[int, int], channels: int = 1, **kwargs: object
) -> float:
    """The relative error of :func:`adjoint_check`; below ~1e-10 in float64 for an exact adjoint."""
    return adjoint_check(operator, image_shape, channels, **kwargs).relative_error  # type: ignore[arg-type]
