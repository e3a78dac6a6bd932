"""The forward operator as a real matrix on flattened images, restricted to the measurement elements
the fit used.

The linear model is y = A x + noise on the elements that depend on the image and were not held out
for validation; a complex measurement (k-space) counts as its real and imaginary parts.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dip_lightning.physics.holdout import observed_elements
from dip_lightning.physics.observation import InverseProblem


class Measurement:
    """A: (B, N) flattened images -> (B, M) real measurement elements, and its adjoint."""

    def __init__(self, problem: InverseProblem) -> None:
        self.operator = problem.operator
        self.channels, self.image_shape = problem.channels, tuple(problem.image_shape)
        observation = problem.observation
        self.is_complex = observation.is_complex()
        self.shape = tuple(observation.shape[1:])
        keep = observed_elements(problem)
        if problem.train_mask is not None:
            keep = keep & problem.train_mask.to(torch.bool).expand_as(keep)
        keep = keep.flatten()
        if self.is_complex:
            keep = keep.repeat_interleave(2)
        self.index = torch.nonzero(keep).flatten()
        self.num_full = keep.numel()
        self.dtype = next((b.dtype for b in self.operator.buffers() if b.is_floating_point()), torch.float32)
        self.y = self._real(observation).double()[0, self.index]

    @property
    def size(self) -> int:
        return self.index.numel()

    @property
    def num_pixels(self) -> int:
        return self.channels * self.image_shape[0] * self.image_shape[1]

    def _real(self, y: Tensor) -> Tensor:
        y = torch.view_as_real(y) if y.is_complex() else y
        return y.reshape(y.shape[0], -1)

    def forward(self, x: Tensor, chunk: int = 4096) -> Tensor:
        """A x for x (B, N); float64."""
        out = []
        for start in range(0, x.shape[0], chunk):
            images = x[start : start + chunk].to(self.dtype).reshape(-1, self.channels, *self.image_shape)
            with torch.no_grad():
                out.append(self._real(self.operator(images))[:, self.index].double())
        return torch.cat(out)

    def adjoint(self, v: Tensor, chunk: int = 4096) -> Tensor:
        """A^T v for v (B, M); float64."""
        out = []
        for start in range(0, v.shape[0], chunk):
            part = v[start : start + chunk]
            full = torch.zeros(part.shape[0], self.num_full, dtype=self.dtype, device=part.device)
            full[:, self.index] = part.to(self.dtype)
            if self.is_complex:
                full = torch.view_as_complex(full.reshape(part.shape[0], *self.shape, 2).contiguous())
            else:
                full = full.reshape(part.shape[0], *self.shape)
            with torch.no_grad():
                out.append(self.operator.adjoint(full).reshape(part.shape[0], -1).double())
        return torch.cat(out)

    def to_measurement_shape(self, values: Tensor) -> Tensor:
        """Per-element variances (M,) back to the observation's shape (1, *shape), zero where the
        fit used no element; a complex element gets the sum of its two parts' variances."""
        full = torch.zeros(self.num_full, dtype=values.dtype, device=values.device)
        full[self.index] = values
        if self.is_complex:
            full = full.reshape(-1, 2).sum(dim=1)
        return full.reshape(1, *self.shape).float()
