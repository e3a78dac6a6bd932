"""Image regularisers that any method can add to its loss (the ``regulariser`` config group)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dip_lightning.errors import check_choice, check_positive

TV_KINDS = ("anisotropic", "isotropic")


class TotalVariation(nn.Module):
    """weight * TV(x), summed over pixels and channels as in DIP+TV (Baguer et al. 2020).

    ``anisotropic`` sums |dx| + |dy|; ``isotropic`` sums sqrt(dx^2 + dy^2 + eps), whose eps keeps
    the gradient finite on flat regions. The sum (not the mean) matches the published TV weights,
    which are therefore size dependent.
    """

    def __init__(self, weight: float = 1e-4, kind: str = "anisotropic", eps: float = 1e-8) -> None:
        super().__init__()
        self.weight = float(check_positive("regulariser.weight", weight, allow_zero=True))
        self.kind = str(check_choice("regulariser.kind", kind, TV_KINDS))
        self.eps = eps

    def forward(self, image: Tensor) -> Tensor:
        dx = image[..., :, 1:] - image[..., :, :-1]
        dy = image[..., 1:, :] - image[..., :-1, :]
        if self.kind == "anisotropic":
            tv = dx.abs().sum() + dy.abs().sum()
        else:
            tv = torch.sqrt(dx[..., :-1, :].pow(2) + dy[..., :, :-1].pow(2) + self.eps).sum()
        return self.weight * tv / image.shape[0]
