"""An image prior that turns the loss into NaN after a number of steps, to test divergence handling."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class NaNAfter(nn.Module):
    """Adds 0 to the loss for ``steps`` calls, then NaN."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps
        self.calls = 0

    def forward(self, image: Tensor) -> Tensor:
        self.calls += 1
        value = 0.0 if self.calls <= self.steps else float("nan")
        return torch.tensor(value, device=image.device)


class NaNGradientAfter(nn.Module):
    """Adds 0 * mean(image) for ``steps`` calls, then NaN * mean(image): the weights become NaN,
    so every later output is NaN too."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps
        self.calls = 0

    def forward(self, image: Tensor) -> Tensor:
        self.calls += 1
        factor = 0.0 if self.calls <= self.steps else float("nan")
        return image.mean() * factor
