"""Conjugate-gradient least squares (CGLS): the generic pseudo-inverse of a linear operator.

CGLS runs conjugate gradients on the normal equations (A^T A + damping I) x = A^T y using only
A and A^T, never the matrix A^T A (whose condition number is the square of A's). Started at x = 0
without damping, its iterates stay in the range of A^T, so it converges to the minimum-norm
least-squares solution A^+ y; stopped early it is itself a regulariser (semi-convergence), which
is why the number of iterations is a setting and not only the tolerance.

Complex measurements are handled through the real inner product Re<u, v> of the measurement
space: ``operator.adjoint`` must be the adjoint for it (an image-space, real tensor), which is how
every operator in this package defines it.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from dip_lightning.errors import check_int, check_positive

__all__ = ["DEFAULT_DAMPING", "DEFAULT_ITERATIONS", "DEFAULT_TOLERANCE", "LinearMap", "cgls"]

DEFAULT_ITERATIONS = 100
DEFAULT_TOLERANCE = 1e-6
DEFAULT_DAMPING = 0.0


class LinearMap(Protocol):
    """Anything with ``A(x)`` and ``A.adjoint(y)``: every ForwardOperator."""

    def __call__(self, x: Tensor) -> Tensor: ...

    def adjoint(self, y: Tensor) -> Tensor: ...


def _squared_norm(values: Tensor) -> float:
    """||v||^2 in float64; for complex v the sum of |v_i|^2 (the real inner product <v, v>)."""
    magnitude = values.abs() if values.is_complex() else values
    return float(magnitude.to(torch.float64).square().sum())


def cgls(
    operator: LinearMap,
    y: Tensor,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    tolerance: float = DEFAULT_TOLERANCE,
    damping: float = DEFAULT_DAMPING,
) -> Tensor:
    """The image x minimising ||A x - y||^2 + damping ||x||^2, by at most ``iterations`` CGLS steps.

    Starts from x = 0 and stops early once the normal-equation residual
    ||A^T (y - A x) - damping x|| has fallen to ``tolerance`` times its starting value ||A^T y||.
    The whole batch is one least-squares problem (the images of a batch are independent, so its
    solution is the per-image one). Gradients flow through it as through any torch code; callers
    that only need values wrap it in ``torch.no_grad()``. An operator with ``linear = False`` is
    refused.
    """
    if not getattr(operator, "linear", True):
        raise ValueError(f"CGLS needs a linear operator; {type(operator).__name__} is not linear")
    iterations = check_int("cgls.iterations", iterations, 0)
    tolerance = float(check_positive("cgls.tolerance", tolerance, allow_zero=True))
    damping = float(check_positive("cgls.damping", damping, allow_zero=True))
    gradient = operator.adjoint(y)
    image = torch.zeros_like(gradient)
    residual = y
    direction = gradient
    gamma = _squared_norm(gradient)
    target = tolerance**2 * gamma
    for _ in range(iterations):
        if gamma <= target or gamma == 0.0:
            break
        projected = operator(direction)
        curvature = _squared_norm(projected) + damping * _squared_norm(direction)
        if curvature <= 0.0:
            break
        step = gamma / curvature
        image = image + step * direction
        residual = residual - step * projected
        gradient = operator.adjoint(residual) - damping * image
        gamma_next = _squared_norm(gradient)
        direction = gradient + (gamma_next / gamma) * direction
        gamma = gamma_next
    return image
