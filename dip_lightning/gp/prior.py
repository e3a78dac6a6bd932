"""A stationary Gaussian-process image prior whose kernel is a network's infinite-width limit.

The prior lives on a periodic grid (a torus): there its covariance matrix is circulant, so
products with it, its square root (for samples) and its eigenvalues are FFTs. Regression on a real
image embeds the image in a larger torus (``pad_factor``) so that opposite borders do not
correlate through the wrap-around; see :mod:`dip_lightning.gp.regression`.

Example:
    >>> prior = GPPrior.from_architecture(channels_down=[16, 16], channels_up=[16, 16], channels_skip=[4, 4])
    >>> prior.covariance((16, 16)).shape, round(prior.mean, 3)
    (torch.Size([16, 16]), 0.5)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from dip_lightning.errors import ConfigError, check_finite, check_int, check_positive
from dip_lightning.gp.architecture import skipnet_layers
from dip_lightning.gp.kernel import Layer, required_multiple, stationary_moments

__all__ = ["GPPrior"]


class GPPrior:
    """GP(mean, covariance) on images, the covariance that of a random network's wide limit.

    Args:
        layers: the architecture (see :mod:`dip_lightning.gp.kernel`).
        input_std, input_mean: moments of the network input's i.i.d. pixels.
        mean: the prior mean; None takes the network output's mean (0.5 behind a sigmoid).
        quadrature_nodes: Gauss-Hermite nodes per axis for activations without a closed form.
        setting: the setting named when the architecture does not fit an image size.
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        *,
        input_std: float = 1.0,
        input_mean: float = 0.0,
        mean: float | None = None,
        quadrature_nodes: int = 64,
        setting: str = "gp.layers",
    ) -> None:
        self.layers = tuple(layers)
        self.setting = setting
        self.multiple = required_multiple(self.layers, setting)
        self.input_std = float(check_positive("gp.input_std", input_std, allow_zero=True))
        self.input_mean = float(check_finite("gp.input_mean", input_mean))
        self.quadrature_nodes = check_int("gp.quadrature_nodes", quadrature_nodes, 8)
        self._cache: dict[tuple[int, int], tuple[float, Tensor]] = {}
        self._spectra: dict[tuple[int, int], Tensor] = {}
        network_mean, _ = self._moments((self.multiple, self.multiple))  # validates the structure
        self.mean = network_mean if mean is None else float(check_finite("method.prior_mean", mean))

    @classmethod
    def from_architecture(
        cls,
        *,
        input_scale: float = 0.1,
        mean: float | None = None,
        quadrature_nodes: int = 64,
        **model_settings: object,
    ) -> GPPrior:
        """The prior of our SkipNet with these ``model`` settings (SkipNet's names and defaults).

        ``input_scale`` is the DIP input's range: uniform noise in [0, input_scale), mean
        input_scale / 2 and standard deviation input_scale / sqrt(12). With normalisation after
        the first convolution (``model.norm`` batch or instance) it does not matter.
        """
        check_positive("method.input.scale", input_scale)
        layers = skipnet_layers(**model_settings)  # type: ignore[arg-type]
        return cls(
            layers,
            input_std=input_scale / math.sqrt(12.0),
            input_mean=input_scale / 2.0,
            mean=mean,
            quadrature_nodes=quadrature_nodes,
            setting="model.channels_down",
        )

    # --------------------------------------------------------------------------------- kernel
    def check_shape(self, shape: tuple[int, int], what: str = "grid") -> None:
        """Raise ConfigError unless the network can run on a periodic grid of this shape."""
        height, width = shape
        if height % self.multiple or width % self.multiple:
            raise ConfigError(
                self.setting,
                f"{len(self.layers)} layers",
                f"the {what} sides must be divisible by {self.multiple} (one halving per scale), "
                f"got {height}x{width}; use fewer scales or another image size",
            )

    def _moments(self, shape: tuple[int, int]) -> tuple[float, Tensor]:
        key = (int(shape[0]), int(shape[1]))
        if key not in self._cache:
            self.check_shape(key)
            mean, cov = stationary_moments(
                self.layers,
                key,
                self.input_std,
                self.input_mean,
                quadrature_nodes=self.quadrature_nodes,
                setting=self.setting,
            )
            if tuple(cov.shape) != key:
                raise ConfigError(
                    self.setting, f"{len(self.layers)} layers", "must upsample as often as they downsample"
                )
            self._cache[key] = (mean, cov)
        return self._cache[key]

    def covariance(self, shape: tuple[int, int]) -> Tensor:
        """Stationary covariance on the periodic grid: entry [dy, dx] is Cov(x(p), x(p + (dy, dx)))."""
        return self._moments(shape)[1]

    def offsets(self, height: int, width: int) -> Tensor:
        """Covariance at offsets -(H-1)..H-1 by -(W-1)..W-1, shape (2H-1, 2W-1), offset 0 at the centre.

        Computed on a grid of at least twice the size, so no offset wraps around.
        """
        grid = tuple(-(-2 * s // self.multiple) * self.multiple for s in (height, width))
        cov = torch.fft.fftshift(self.covariance(grid))  # offset 0 at index grid // 2
        cy, cx = grid[0] // 2, grid[1] // 2
        return cov[cy - height + 1 : cy + height, cx - width + 1 : cx + width]

    def spectrum(self, shape: tuple[int, int]) -> Tensor:
        """Eigenvalues of the circulant covariance, as an rfft2 half-spectrum (H, W // 2 + 1)."""
        key = (int(shape[0]), int(shape[1]))
        if key not in self._spectra:
            self._spectra[key] = torch.fft.rfft2(self.covariance(key)).real.clamp_min(0.0)
        return self._spectra[key]

    def apply_covariance(self, v: Tensor, power: float = 1.0) -> Tensor:
        """K^power v for images v (..., H, W) on the periodic grid (power 0.5: the square root)."""
        shape = (v.shape[-2], v.shape[-1])
        spectrum = self.spectrum(shape).to(device=v.device, dtype=torch.float64)
        if power != 1.0:
            spectrum = spectrum.pow(power)
        out = torch.fft.irfft2(torch.fft.rfft2(v.double()) * spectrum, s=shape)
        return out.to(v.dtype)

    def sample(
        self,
        shape: tuple[int, int],
        count: int = 1,
        channels: int = 1,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``count`` prior draws (count, channels, H, W) on the periodic grid, float64."""
        noise = torch.randn(count, channels, *shape, generator=generator, dtype=torch.float64)
        return self.mean + self.apply_covariance(noise, 0.5)
