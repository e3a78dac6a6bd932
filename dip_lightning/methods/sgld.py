"""Stochastic gradient Langevin dynamics DIP (Cheng et al. 2019).

Adam with weight decay (the Gaussian weight prior) and, after every optimiser step, Gaussian noise
of std ``noise_scale * lr`` added to the chosen parameters. After ``burn_in`` steps the output is
sampled every ``sample_every`` steps; the posterior mean and variance are running moments of the
samples (Welford updates on the device), never a stored list of images.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dip_lightning.errors import check_choice, check_positive
from dip_lightning.methods.base import DeepImagePrior
from dip_lightning.methods.prediction import Prediction
from dip_lightning.metrics.running import RunningMoments

NOISY_PARAMETERS = ("conv_weights", "all")


def langevin_parameters(model: nn.Module, which: str) -> list[nn.Parameter]:
    """The parameters that receive Langevin noise: conv weights (the original) or all of them."""
    if which == "all":
        return [p for p in model.parameters() if p.requires_grad]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return [m.weight for m in convs]


class SGLDDIP(DeepImagePrior):
    """DIP whose weights follow Langevin dynamics; the samples give mean and variance.

    Args:
        noise_scale: the injected noise has std ``noise_scale * lr`` (2 in the original).
        noisy_parameters: ``conv_weights`` (original) or ``all``.
        burn_in: steps before the first sample (7000 in the original).
        sample_every: steps between samples after the burn-in (50 in the original).
    """

    def __init__(
        self,
        *args: Any,
        noise_scale: float = 2.0,
        noisy_parameters: str = "conv_weights",
        burn_in: int = 7000,
        sample_every: int = 50,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("reconstruction", "predictive_mean")
        super().__init__(*args, **kwargs)
        self.noise_scale = float(check_positive("method.noise_scale", noise_scale, allow_zero=True))
        self.noisy_parameters = str(
            check_choice("method.noisy_parameters", noisy_parameters, NOISY_PARAMETERS)
        )
        self.burn_in = int(check_positive("method.burn_in", burn_in, allow_zero=True))
        self.sample_every = int(check_positive("method.sample_every", sample_every))
        self.samples = RunningMoments()
        self._noisy: list[nn.Parameter] | None = None

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:  # type: ignore[override]
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self.noise_scale <= 0:
            return
        if self._noisy is None:
            self._noisy = langevin_parameters(self.net, self.noisy_parameters)
        lr = optimizer.param_groups[0]["lr"]
        with torch.no_grad():
            for parameter in self._noisy:
                parameter.add_(torch.randn_like(parameter), alpha=self.noise_scale * lr)

    def track_output(self, image: torch.Tensor) -> None:
        super().track_output(image)
        step = self.global_step
        if step >= self.burn_in and (step - self.burn_in) % self.sample_every == 0:
            self.samples.update(image)

    @torch.no_grad()
    def predict_distribution(self) -> Prediction:
        if self.samples.count < 2:
            return super().predict_distribution()
        _, log_precision = self.sample_outputs(1)
        return Prediction(
            mean=self.samples.mean.to(self.net_input.dtype),
            epistemic=self.samples.variance.to(self.net_input.dtype),
            aleatoric=self.aleatoric_variance(log_precision),
        )
