"""The identity operator A = I, for denoising."""

from __future__ import annotations

from torch import Tensor

from dip_lightning.physics.base import ForwardOperator

__all__ = ["Identity"]


class Identity(ForwardOperator):
    """y = x: the measurement is the image itself (denoising).

    Args:
        image_shape: (H, W) if the task fixes it; the operator itself acts on any size.

    Example:
        >>> import torch
        >>> op = Identity()
        >>> x = torch.rand(1, 3, 8, 8)
        >>> bool((op(x) == x).all() and (op.adjoint(x) == x).all())
        True
    """

    measurement_in_image_space = True

    def __init__(self, image_shape: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape) if image_shape is not None else None

    def forward(self, x: Tensor) -> Tensor:
        return x

    def adjoint(self, y: Tensor) -> Tensor:
        return y

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        return y

    def propagate_variance(self, variance: Tensor) -> Tensor:
        return variance
