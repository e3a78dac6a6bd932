"""The forward-operator interface every inverse problem plugs into.

An operator is a linear map A from images (B, C, H, W) to measurements. Methods only call
``forward``, ``adjoint``, ``pseudo_inverse`` and ``propagate_variance``; they never ask which
operator they hold. Operators are ``nn.Module`` so that their buffers (masks, kernels, system
matrices) follow ``.to(device)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn


class ForwardOperator(nn.Module, ABC):
    """A linear forward operator y = A x acting on batches of images (B, C, H, W).

    Subclasses set ``image_shape`` (H, W) when it is fixed by construction (a mask, a CT geometry)
    and raise :class:`dip_lightning.errors.ConfigError` from ``check_image_shape`` for sizes they
    cannot handle, before any training starts.
    """

    image_shape: tuple[int, int] | None = None
    measurement_in_image_space: bool = False
    """True when the measurement lives on the image's pixel grid, element for element (identity,
    masks). Per-pixel quantities predicted in image space (the heteroscedastic log-precision of
    ``likelihood=nll``) are only meaningful for such operators."""

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """Apply A to a batch of images (B, C, H, W)."""

    @abstractmethod
    def adjoint(self, y: Tensor) -> Tensor:
        """Apply the exact adjoint A^T to a batch of measurements."""

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        """A cheap image-space estimate from a measurement, for display and as a network input.

        The default is the adjoint; operators override it with something better (FBP, bicubic).
        """
        return self.adjoint(y)

    def propagate_variance(self, variance: Tensor) -> Tensor:
        """Variance of A x for an image with pixelwise *independent* variance ``variance``.

        For a linear map this is (A∘A) applied to the variance, where A∘A squares each entry. It is
        exact only for independent pixels, so it is not used for the calibration of Monte Carlo
        predictions, whose samples are spatially correlated (those push every sample through A and
        take the variance there). It serves to find the measurement elements that depend on the
        image at all (``dip_lightning.physics.holdout.observed_elements``). Operators that cannot do
        this raise NotImplementedError.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot propagate variances")

    def measurement_shape(self, image_shape: tuple[int, int], channels: int = 1) -> tuple[int, ...]:
        """Shape (without batch) of the measurement of an image of size ``image_shape``."""
        probe = torch.zeros(1, channels, *image_shape, device=self._device())
        return tuple(self.forward(probe).shape[1:])

    def check_image_shape(self, image_shape: tuple[int, int]) -> None:
        """Raise ConfigError if this operator cannot act on images of ``image_shape``."""

    def _device(self) -> torch.device:
        for tensor in list(self.buffers()) + list(self.parameters()):
            return tensor.device
        return torch.device("cpu")

    def extra_repr(self) -> str:
        return f"image_shape={self.image_shape}"
