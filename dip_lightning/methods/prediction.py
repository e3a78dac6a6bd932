"""The predictive distribution a method reports for one image."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Prediction:
    """Per-pixel predictive mean and variances, each (1, C, H, W).

    ``epistemic`` is the spread of the network outputs (weights, dropout masks or SGLD samples);
    ``aleatoric`` the noise variance the network predicts through its log-precision channel. Plain
    DIP reports zeros for both.
    """

    mean: Tensor
    epistemic: Tensor
    aleatoric: Tensor

    @property
    def total(self) -> Tensor:
        return self.epistemic + self.aleatoric

    @property
    def has_uncertainty(self) -> bool:
        return bool(self.total.abs().sum() > 0)

    def detach_cpu(self) -> Prediction:
        return Prediction(*(t.detach().float().cpu() for t in (self.mean, self.epistemic, self.aleatoric)))
