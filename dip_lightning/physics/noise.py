"""Noise models: how a clean measurement A x becomes the observation y.

Every model draws its random numbers from the ``torch.Generator`` it is given, so an observation is
a function of the seed alone. Complex measurements (k-space) get complex Gaussian noise whose real
and imaginary parts each have the configured standard deviation; the models that only make sense
for real intensities (Poisson, speckle) refuse them. The numbers are drawn on the generator's device and then moved to the
measurement's device: with a CPU generator (what :func:`dip_lightning.physics.observation.make_observation`
uses) the same seed gives the same observation on a CPU and on a GPU.

Example:
    >>> import torch
    >>> noise = GaussianNoise(sigma=0.1)
    >>> clean = torch.full((1, 1, 64, 64), 0.5)
    >>> y = noise(clean, torch.Generator().manual_seed(0))
    >>> y.shape, noise.expected_std(clean)
    (torch.Size([1, 1, 64, 64]), 0.1)
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from dip_lightning.errors import ConfigError, check_choice, check_positive

RELATIVE_REFERENCES: tuple[str, ...] = ("mean_abs", "rms")
"""What a relative Gaussian sigma is a fraction of (see :class:`GaussianNoise`)."""

__all__ = [
    "RELATIVE_REFERENCES",
    "GaussianNoise",
    "NoNoise",
    "NoiseModel",
    "PoissonNoise",
    "SpeckleNoise",
    "require_real",
]


def _work_dtype(clean: Tensor) -> torch.dtype:
    """float64 (or complex128) stays double; everything else (half, bfloat16, float32) draws in float32."""
    return torch.float64 if clean.dtype in (torch.float64, torch.complex128) else torch.float32


def _as_work(clean: Tensor) -> Tensor:
    """``clean`` in the working precision, complex kept complex."""
    real = _work_dtype(clean)
    if clean.is_complex():
        return clean.to(torch.complex128 if real == torch.float64 else torch.complex64)
    return clean.to(real)


def standard_normal(clean: Tensor, generator: torch.Generator) -> Tensor:
    """N(0, 1) numbers shaped like ``clean``, drawn on the generator's device, returned on clean's.

    For a complex ``clean`` the real and the imaginary part are each N(0, 1) (drawn as
    interleaved pairs), so a complex entry is two independent real ones.
    """
    shape = (*clean.shape, 2) if clean.is_complex() else clean.shape
    noise = torch.randn(shape, generator=generator, device=generator.device, dtype=_work_dtype(clean))
    if clean.is_complex():
        noise = torch.view_as_complex(noise)
    return noise.to(clean.device)


def require_real(clean: Tensor, noise: str) -> None:
    """Raise ConfigError for a complex measurement: ``noise`` models real intensities only."""
    if clean.is_complex():
        raise ConfigError(
            "noise",
            noise,
            "this noise model needs a real measurement, but the operator's measurements are complex "
            "(e.g. operator=fourier); use noise=gaussian or noise=none",
        )


class NoiseModel(ABC):
    """Maps a clean measurement to a noisy one of the same shape."""

    @abstractmethod
    def __call__(self, clean: Tensor, generator: torch.Generator) -> Tensor:
        """Return a noisy version of ``clean`` (same shape, dtype and device)."""

    @abstractmethod
    def expected_std(self, clean: Tensor) -> float | None:
        """Root-mean-square size of ``y - clean`` in measurement units, if it is known.

        This is the noise level the discrepancy principle compares the residual with:
        E||y - A x||^2 = N * expected_std^2 for a measurement of N entries. None when the model
        cannot say.
        """

    @property
    @abstractmethod
    def name(self) -> str:
        """A short description for logs and run names, e.g. ``gaussian(sigma=0.1)``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}<{self.name}>"


class NoNoise(NoiseModel):
    """A noiseless observation: y = A x (a copy, so later in-place edits cannot reach A x)."""

    def __call__(self, clean: Tensor, generator: torch.Generator) -> Tensor:
        return clean.clone()

    def expected_std(self, clean: Tensor) -> float | None:
        return 0.0

    @property
    def name(self) -> str:
        return "none"


class GaussianNoise(NoiseModel):
    """Additive white Gaussian noise y = A x + s * n, n ~ N(0, 1).

    For a complex measurement n is complex with independent N(0, 1) real and imaginary parts, so
    each part has standard deviation s and E|y - A x|^2 = 2 s^2 per complex entry: ``expected_std``
    (s) is then the rms per real component, as the discrepancy principle counts a complex entry
    as two real ones.

    Args:
        sigma: the standard deviation s (``relative=False``), or the factor in
            s = sigma * mean(|A x|) (``relative=True``; the convention of the CT literature, where
            "5% noise" means sigma = 0.05).
        relative: see ``sigma``.
        reference: what a relative sigma multiplies: ``mean_abs``, the mean |A x| (the CT
            convention), or ``rms``, the root mean square of |A x| over all its elements. For
            k-space from the orthonormal FFT the rms is, by Parseval, close to the image's own rms
            (the unsampled lines carry little energy), so ``rms`` gives about the same image-space
            noise at every acceleration, where the mean |A x| shrinks with the share of lines read.
        clip: clip the noisy measurement to [0, 1], as for images stored with 8 bits. The
            clipped noise is no longer exactly Gaussian; ``expected_std`` still reports s. A
            complex measurement has no such range and is not clipped (with a warning).
    """

    def __init__(
        self, sigma: float = 0.1, relative: bool = False, clip: bool = False, reference: str = "mean_abs"
    ) -> None:
        self.sigma = float(check_positive("noise.sigma", sigma, allow_zero=True))
        self.relative = bool(relative)
        self.clip = bool(clip)
        self.reference = str(check_choice("noise.reference", reference, RELATIVE_REFERENCES))

    def std(self, clean: Tensor) -> float:
        """The absolute standard deviation s for this clean measurement (relative: to ``reference``)."""
        if not self.relative:
            return self.sigma
        magnitude = clean.detach().abs().to(torch.float64)
        if self.reference == "rms":
            return self.sigma * float(magnitude.square().mean().sqrt())
        return self.sigma * float(magnitude.mean())

    def __call__(self, clean: Tensor, generator: torch.Generator) -> Tensor:
        noisy = _as_work(clean) + self.std(clean) * standard_normal(clean, generator)
        if self.clip and noisy.is_complex():
            warnings.warn(
                "noise.clip=true is ignored for a complex measurement (it has no [0, 1] range)", stacklevel=2
            )
        elif self.clip:
            noisy = noisy.clamp(0.0, 1.0)
        return noisy.to(clean.dtype)

    def expected_std(self, clean: Tensor) -> float | None:
        return self.std(clean)

    @property
    def name(self) -> str:
        relative = ""
        if self.relative:
            relative = ", relative" + (" to rms" if self.reference == "rms" else "")
        flags = relative + (", clip" if self.clip else "")
        return f"gaussian(sigma={self.sigma:g}{flags})"


class PoissonNoise(NoiseModel):
    """Photon-counting noise: y = Poisson(peak * A x) / peak.

    A clean value of 1 corresponds to ``peak`` expected photons, so lower peaks are noisier; the
    mean is preserved (E y = A x) and the variance is A x / peak. The clean measurement must be
    non-negative (images in [0, 1]).
    """

    def __init__(self, peak: float = 30.0) -> None:
        self.peak = float(check_positive("noise.peak", peak))

    def __call__(self, clean: Tensor, generator: torch.Generator) -> Tensor:
        require_real(clean, "poisson")
        minimum = float(clean.min()) if clean.numel() else 0.0
        if not minimum >= 0.0:  # also catches NaN
            raise ConfigError(
                "noise",
                "poisson",
                f"Poisson noise needs a non-negative clean measurement, but its minimum is {minimum:g}; "
                "rescale the image to [0, 1] or choose Gaussian noise",
            )
        rate = clean.detach().to(device=generator.device, dtype=_work_dtype(clean)) * self.peak
        counts = torch.poisson(rate, generator=generator)
        return (counts / self.peak).to(device=clean.device, dtype=clean.dtype)

    def expected_std(self, clean: Tensor) -> float | None:
        # The per-entry variance is x / peak; its mean over the measurement gives the rms noise.
        return math.sqrt(float(clean.detach().clamp(min=0).to(torch.float64).mean()) / self.peak)

    @property
    def name(self) -> str:
        return f"poisson(peak={self.peak:g})"


class SpeckleNoise(NoiseModel):
    """Multiplicative log-normal speckle, y = A x * exp(sigma * n), n ~ N(0, 1) (ultrasound).

    The noise is not zero-mean: E y = A x * exp(sigma^2 / 2). ``expected_std`` is the rms of
    y - A x, sqrt(mean((A x)^2) * (exp(2 sigma^2) - 2 exp(sigma^2 / 2) + 1)).
    """

    def __init__(self, sigma: float = 0.1) -> None:
        self.sigma = float(check_positive("noise.sigma", sigma, allow_zero=True))

    def __call__(self, clean: Tensor, generator: torch.Generator) -> Tensor:
        require_real(clean, "speckle")
        factor = torch.exp(self.sigma * standard_normal(clean, generator))
        return (clean.to(factor.dtype) * factor).to(clean.dtype)

    def expected_std(self, clean: Tensor) -> float | None:
        s2 = self.sigma**2
        mean_square = float(clean.detach().to(torch.float64).square().mean())
        return math.sqrt(mean_square * (math.exp(2 * s2) - 2 * math.exp(s2 / 2) + 1))

    @property
    def name(self) -> str:
        return f"speckle(sigma={self.sigma:g})"
