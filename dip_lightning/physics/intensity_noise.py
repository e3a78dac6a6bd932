"""Photon-counting noise on magnitude measurements (phase retrieval's diffraction patterns).

A detector counts photons of the intensity |A x|^2, not the magnitude: N_i ~ Poisson(|A x|_i^2 / u)
with u the intensity of one photon, and the observation is the magnitude again, y_i = sqrt(u N_i),
in the units of |A x| so that a method fits |A x| against y as usual. The noise level is the
number of photons: u is set so that the whole measurement of one image channel holds
``photons`` photons on average, u = sum_i |A x|_i^2 / photons. Fewer photons, more noise; the
relative error of an element with n expected photons is about 1 / (2 sqrt(n)).

The magnitude of a Poisson count is close to variance-stabilised: the rms of y_i - |A x|_i is
sqrt(u) / 2 for many photons per element and smaller where an element expects few (its count is
mostly 0 and its magnitude too). ``expected_std`` is the exact rms over the measurement (a short
series for elements under 30 expected photons, 1/4 + 7 / (64 n) for the others), which is what
the discrepancy principle compares the residual with.

Example:
    >>> import torch
    >>> noise = IntensityPoissonNoise(photons=1e6)
    >>> clean = torch.rand(1, 1, 16, 16)
    >>> y = noise(clean, torch.Generator().manual_seed(0))
    >>> y.shape == clean.shape and bool((y >= 0).all())
    True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dip_lightning.errors import ConfigError, check_positive
from dip_lightning.physics.noise import NoiseModel, require_real

__all__ = ["IntensityPoissonNoise", "sqrt_poisson_mse"]

# Elements expecting fewer photons get the exact series; above it the asymptotic form is within 1e-4.
_SERIES_BELOW = 30.0
_SERIES_TERMS = 120


def sqrt_poisson_mse(rate: Tensor) -> Tensor:
    """E (sqrt(N) - sqrt(rate))^2 for N ~ Poisson(rate), elementwise, in float64."""
    rate = rate.to(torch.float64).clamp_min(0)
    large = 0.25 + 7.0 / (64.0 * rate.clamp_min(_SERIES_BELOW))
    counts = torch.arange(_SERIES_TERMS, dtype=torch.float64)
    small_rate = rate.clamp_max(_SERIES_BELOW).reshape(-1, 1)
    log_pmf = counts * torch.log(small_rate.clamp_min(1e-300)) - small_rate - torch.lgamma(counts + 1)
    pmf = torch.where(small_rate > 0, log_pmf.exp(), (counts == 0).to(torch.float64))
    mean_root = (pmf * counts.sqrt()).sum(dim=1).reshape(rate.shape)
    small = 2.0 * rate - 2.0 * rate.sqrt() * mean_root
    return torch.where(rate < _SERIES_BELOW, small, large)


class IntensityPoissonNoise(NoiseModel):
    """y = sqrt(u N), N ~ Poisson(|A x|^2 / u), u = sum |A x|^2 / ``photons`` per image channel.

    Args:
        photons: expected photons in the whole measurement of one image channel (> 0).
    """

    def __init__(self, photons: float = 1.0e6) -> None:
        self.photons = float(check_positive("noise.photons", photons))

    def photon_intensity(self, clean: Tensor) -> Tensor:
        """u per image and channel, shape (B, C, 1, ..., 1)."""
        dims = tuple(range(2, clean.ndim))
        total = clean.detach().to(torch.float64).square().sum(dim=dims, keepdim=True)
        return total / self.photons

    def _checked(self, clean: Tensor) -> None:
        require_real(clean, "intensity_poisson")
        minimum = float(clean.min()) if clean.numel() else 0.0
        if not minimum >= 0.0:
            raise ConfigError(
                "noise",
                "intensity_poisson",
                f"photon counts need a magnitude measurement (non-negative), but its minimum is {minimum:g}",
            )
        if clean.ndim < 3:
            raise ValueError(f"the measurement must have shape (B, C, ...), got {tuple(clean.shape)}")

    def __call__(self, clean: Tensor, generator: torch.Generator) -> Tensor:
        self._checked(clean)
        unit = self.photon_intensity(clean)
        rate = clean.detach().to(torch.float64).square() / unit.clamp_min(1e-300)
        counts = torch.poisson(rate.to(generator.device), generator=generator).to(clean.device)
        return (counts * unit).sqrt().to(clean.dtype)

    def expected_std(self, clean: Tensor) -> float | None:
        self._checked(clean)
        unit = self.photon_intensity(clean)
        rate = clean.detach().to(torch.float64).square() / unit.clamp_min(1e-300)
        return math.sqrt(float((sqrt_poisson_mse(rate.cpu()) * unit.cpu()).mean()))

    @property
    def name(self) -> str:
        return f"intensity_poisson(photons={self.photons:g})"
