"""The predictive distribution a method reports for one image."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dip_lightning.metrics.loglik import BlockCovariance
from dip_lightning.physics.base import ForwardOperator


@dataclass
class Prediction:
    """Per-pixel predictive mean and variances, each (1, C, H, W), and the epistemic variance of
    the measurement.

    ``epistemic`` is the spread of the network outputs (weights, dropout masks or SGLD samples);
    ``aleatoric`` the noise variance the network predicts through its log-precision channel. Plain
    DIP reports zeros for both. ``measurement_epistemic`` (1, *measurement shape) is the variance
    of A x over the same samples: Monte Carlo samples are spatially correlated, so it cannot be
    computed from the per-pixel ``epistemic`` map (see :func:`measurement_variance`). None when
    the prediction was not made from samples.

    For the test log-likelihood, which needs correlations between pixels, a prediction may carry
    the image ``samples`` (T, C, H, W) its ``epistemic`` map was computed from (the T evaluation
    samples, no more), and a method with an analytic Gaussian posterior may give its
    ``covariance`` instead (any :class:`~dip_lightning.metrics.loglik.BlockCovariance`); the
    covariance is preferred when both are there.
    """

    mean: Tensor
    epistemic: Tensor
    aleatoric: Tensor
    measurement_epistemic: Tensor | None = None
    samples: Tensor | None = None
    covariance: BlockCovariance | None = None

    @property
    def total(self) -> Tensor:
        return self.epistemic + self.aleatoric

    @property
    def has_uncertainty(self) -> bool:
        return bool(self.total.abs().sum() > 0)

    def detach_cpu(self) -> Prediction:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().float().cpu()

        tensors = (self.mean, self.epistemic, self.aleatoric, self.measurement_epistemic, self.samples)
        return Prediction(*(move(t) for t in tensors), covariance=self.covariance)


@torch.no_grad()
def measurement_variance(samples: Tensor, operator: ForwardOperator) -> Tensor:
    """Variance of A x over the samples x_t (T, C, H, W), shape (1, *measurement shape).

    Each sample is pushed through the operator and the variance is taken there, which is exact
    for any correlation between pixels; propagating the per-pixel variance instead assumes
    independent pixels and, for correlated DIP samples, underestimated the variance of a blurring
    or projecting operator several-fold.
    """
    return operator(samples).var(dim=0, unbiased=False, keepdim=True)
