"""Photon-counting noise of a transmission CT scan, expressed on the line integrals.

A detector pixel behind a ray with line integral p counts N ~ Poisson(N0 exp(-mu p)) photons,
where N0 (``photons``) is the count of an unattenuated ray and mu converts the image's intensity
units into attenuation. The observation is the log-transformed sinogram -log(N / N0) / mu, which
is what scanners hand over and what our ray transform predicts. Its noise is signal dependent:
rays through dense material see few photons and are much noisier than rays through air, which is
what makes low-dose CT hard. This is the model of the LoDoPaB-CT benchmark (N0 = 4096).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dip_lightning.errors import check_positive
from dip_lightning.physics.noise import NoiseModel, require_real

# Default attenuation of the most attenuating ray: exp(-3) leaves about 5% of the photons, a
# typical value for a body cross-section and the order of magnitude in LoDoPaB-CT.
DEFAULT_MAX_ATTENUATION = 3.0
# Counts of zero would give log(0); they are replaced by this fraction of a photon.
ZERO_COUNT = 0.1


class PoissonLogNoise(NoiseModel):
    """Poisson photon noise on exp(-mu p), returned as log-transformed line integrals.

    Args:
        photons: expected counts N0 per detector pixel for an unattenuated ray (dose).
        mu_scale: attenuation per unit of line integral. None scales each clean sinogram so that
            its largest line integral is attenuated by exp(-3) (``DEFAULT_MAX_ATTENUATION``),
            whatever the image's units and the pixel size; a number fixes mu for every sinogram.
    """

    def __init__(self, photons: float = 4096.0, mu_scale: float | None = None) -> None:
        self.photons = float(check_positive("noise.photons", photons))
        self.mu_scale = None if mu_scale is None else float(check_positive("noise.mu_scale", mu_scale))

    def mu(self, clean: Tensor) -> float:
        """The attenuation factor used for ``clean``."""
        if self.mu_scale is not None:
            return self.mu_scale
        peak = float(clean.detach().abs().max()) if clean.numel() else 0.0
        return DEFAULT_MAX_ATTENUATION / peak if peak > 0.0 else 1.0

    def _expected_counts(self, clean: Tensor, mu: float) -> Tensor:
        work = torch.float64 if clean.dtype == torch.float64 else torch.float32
        return self.photons * torch.exp(-mu * clean.detach().to(work))

    def __call__(self, clean: Tensor, generator: torch.Generator) -> Tensor:
        require_real(clean, "ct_poisson")
        if not bool(torch.isfinite(clean).all()):
            raise ValueError("PoissonLogNoise: the clean sinogram holds NaN or infinite values")
        mu = self.mu(clean)
        rate = self._expected_counts(clean, mu).to(generator.device)
        counts = torch.poisson(rate, generator=generator).clamp_(min=ZERO_COUNT)
        noisy = -torch.log(counts / self.photons) / mu
        return noisy.to(device=clean.device, dtype=clean.dtype)

    def expected_std(self, clean: Tensor) -> float | None:
        """Delta method: Var(-log(N / N0)) ~ 1 / E N per ray; the rms over rays, divided by mu."""
        mu = self.mu(clean)
        counts = self._expected_counts(clean, mu).to(torch.float64)
        return math.sqrt(float((1.0 / counts).mean())) / mu

    @property
    def name(self) -> str:
        scale = "auto" if self.mu_scale is None else f"{self.mu_scale:g}"
        return f"poisson_log(photons={self.photons:g}, mu={scale})"
