"""A switch of the data-fidelity loss during training (SelfDeblur: MSE first, then 1 - SSIM).

Ren et al. fit A f(z) to y with the MSE for the first 1000 of 5000 steps and with 1 - SSIM(A f(z), y)
after that: the MSE pulls the image and kernel close fast; SSIM then weighs local structure over
the noise. ``method.fidelity_switch`` makes that a setting of any method: ``at`` (a fraction of
``trainer.max_steps``; null: never) and ``loss``, which replaces the method's likelihood term
from that step on (its other terms, a KL or a TV prior, stay).

The SSIM is the one of the reference's training loss (Wang et al. 2004): an 11 x 11 Gaussian
window of std 1.5 applied with zero padding, C1 = 0.01^2 and C2 = 0.03^2 for data in [0, 1],
averaged over every pixel and channel of the measurement.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dip_lightning.errors import ConfigError, check_choice

__all__ = ["FIDELITY_LOSSES", "FidelitySwitch", "ssim_loss"]

FIDELITY_LOSSES = ("ssim", "mse", "l1")
WINDOW = 11
SIGMA = 1.5


def _window(channels: int, like: Tensor) -> Tensor:
    axis = torch.arange(WINDOW, dtype=like.dtype, device=like.device) - WINDOW // 2
    taps = torch.exp(-(axis**2) / (2 * SIGMA**2))
    taps = taps / taps.sum()
    return torch.outer(taps, taps).expand(channels, 1, WINDOW, WINDOW)


def ssim_loss(a: Tensor, b: Tensor) -> Tensor:
    """1 - mean SSIM of two (B, C, H, W) batches of real images in [0, 1] (see the module docstring)."""
    channels = a.shape[1]
    window = _window(channels, a)

    def local_mean(x: Tensor) -> Tensor:
        return F.conv2d(x, window, padding=WINDOW // 2, groups=channels)

    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a = local_mean(a * a) - mu_a**2
    var_b = local_mean(b * b) - mu_b**2
    cov = local_mean(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return 1.0 - ssim_map.mean()


class FidelitySwitch:
    """When (a fraction of the step budget) the data fidelity becomes ``loss``; see the module."""

    def __init__(self, at: float | None = None, loss: str = "ssim") -> None:
        self.loss = str(check_choice("method.fidelity_switch.loss", loss, FIDELITY_LOSSES))
        if at is not None and (isinstance(at, bool) or not isinstance(at, int | float) or not 0 <= at < 1):
            raise ConfigError(
                "method.fidelity_switch.at", at, "must be a fraction of trainer.max_steps in [0, 1), or null"
            )
        self.at = None if at is None else float(at)
        self.step: int | None = None
        """The first step of the switched loss, set by :meth:`start` from the step budget."""

    @classmethod
    def from_settings(cls, settings: dict[str, Any] | None) -> FidelitySwitch:
        settings = dict(settings or {})
        unknown = set(settings) - {"at", "loss"}
        if unknown:
            raise ConfigError("method.fidelity_switch", settings, "takes only `at` and `loss`")
        return cls(**settings)

    @property
    def enabled(self) -> bool:
        return self.at is not None

    def check(self, observation: Tensor, likelihood: str) -> None:
        """Refuse a switch the problem cannot take, before any training."""
        if not self.enabled:
            return
        if likelihood != "mse":
            raise ConfigError(
                "method.fidelity_switch.at",
                self.at,
                f"replaces the MSE; with method.likelihood={likelihood} set it to null",
            )
        if self.loss == "ssim" and (
            observation.is_complex() or observation.ndim != 4 or min(observation.shape[-2:]) < WINDOW
        ):
            raise ConfigError(
                "method.fidelity_switch.loss",
                self.loss,
                f"the SSIM needs a real image-like measurement of at least {WINDOW} x {WINDOW} pixels, "
                f"this one is {tuple(observation.shape[1:])} {observation.dtype}; use mse or l1",
            )

    def start(self, max_steps: int) -> None:
        """Fix the switching step for a run of ``max_steps`` steps (-1: no budget, no switch)."""
        if not self.enabled:
            return
        if max_steps is None or max_steps < 0:
            raise ConfigError(
                "method.fidelity_switch.at",
                self.at,
                "is a fraction of trainer.max_steps: set trainer.max_steps",
            )
        self.step = round(self.at * max_steps)

    def active(self, step: int) -> bool:
        return self.step is not None and step >= self.step

    def __call__(self, prediction: Tensor, observation: Tensor, mean: Any) -> Tensor:
        """The switched loss between A x and y; ``mean`` averages per-element values over the
        training elements (held-out ones left out)."""
        if self.loss == "ssim":
            return ssim_loss(prediction, observation)
        difference = prediction - observation
        return mean(difference.abs().pow(2) if self.loss == "mse" else difference.abs())
