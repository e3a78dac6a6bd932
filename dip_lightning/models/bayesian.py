"""Mean-field variational (MFVI) convolutions for Bayesian DIP, and conv factories for the networks.

Every weight and bias has an independent Gaussian posterior N(mu, softplus(rho)²). The forward pass
uses the local reparameterisation trick: instead of sampling a weight tensor it samples the
pre-activations, which are Gaussian given the input. That gives lower-variance gradients and draws
independent weight noise for every item of a batch, so T Monte Carlo samples can run as one batched
forward pass over T copies of the input.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dip_lightning.errors import ConfigError, check_choice, check_finite, check_int, check_positive
from dip_lightning.models.layers import PADDING_MODES, ConvFactory, check_kernel, grouped_conv2d

_VAR_FLOOR = 1e-16
"""Smallest pre-activation variance used under the square root; keeps its gradient finite at 0."""

_INIT_KEYS: tuple[str, ...] = ("mu_init_std", "rho_init_mean", "rho_init_std")


def _log_softplus(rho: Tensor) -> Tensor:
    """log(softplus(rho)) without underflow: for very negative rho softplus(rho) ≈ exp(rho)."""
    return torch.where(rho < -20.0, rho, torch.log(F.softplus(rho)))


def check_prior(mu: float, sigma: float) -> tuple[float, float]:
    """The weight prior N(mu, sigma²) as floats: mu finite, sigma finite and > 0 (``prior.*``).

    The one check of the prior: every mean-field layer runs it when its prior is set.
    """
    return float(check_finite("prior.mu", mu)), float(check_positive("prior.sigma", sigma))


def check_posterior_init(mu_init_std: float, rho_init_mean: float, rho_init_std: float) -> None:
    """Posterior initialisation: mu ~ N(0, mu_init_std²), rho ~ N(rho_init_mean, rho_init_std²)."""
    check_positive("method.mu_init_std", mu_init_std, allow_zero=True)
    check_finite("method.rho_init_mean", rho_init_mean)
    check_positive("method.rho_init_std", rho_init_std, allow_zero=True)


class MeanFieldConv2d(nn.Module):
    """2-D convolution with a factorised Gaussian posterior over its weights and biases.

    The posterior standard deviation is softplus(rho), which keeps it positive while rho is
    unconstrained. With ``sample`` False the layer uses the posterior mean and is deterministic.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding_mode: str = "reflect",
        bias: bool = True,
        prior_mu: float = 0.0,
        prior_sigma: float = 0.1,
        mu_init_std: float = 0.1,
        rho_init_mean: float = -3.0,
        rho_init_std: float = 0.1,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels = check_int("model.in_channels", in_channels, 1)
        self.out_channels = check_int("model.out_channels", out_channels, 1)
        self.kernel_size = check_kernel("model.kernel_size", kernel_size)
        self.stride = check_int("model.stride", stride, 1)
        self.padding_mode = str(check_choice("model.padding", padding_mode, PADDING_MODES))
        self.groups = check_int("model.groups", groups, 1)
        if in_channels % groups or out_channels % groups:
            raise ConfigError("model.groups", groups, "must divide the input and output channels")
        self.sample = True
        # Draws the standard normal noise of the pre-activations, shaped like its argument; a
        # replicated network gives every replicate its own stream here.
        self.noise: Callable[[Tensor], Tensor] = torch.randn_like

        shape = (out_channels, in_channels // groups, kernel_size, kernel_size)
        self.weight_mu = nn.Parameter(torch.empty(shape))
        self.weight_rho = nn.Parameter(torch.empty(shape))
        if bias:
            self.bias_mu: nn.Parameter | None = nn.Parameter(torch.empty(out_channels))
            self.bias_rho: nn.Parameter | None = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias_mu", None)
            self.register_parameter("bias_rho", None)
        self.register_buffer("prior_mu", torch.tensor(0.0))
        self.register_buffer("prior_sigma", torch.tensor(1.0))
        self.set_prior(prior_mu, prior_sigma)
        self.reset_parameters(mu_init_std, rho_init_mean, rho_init_std)

    @torch.no_grad()
    def reset_parameters(
        self, mu_init_std: float = 0.1, rho_init_mean: float = -3.0, rho_init_std: float = 0.1
    ) -> None:
        """Draw means from N(0, mu_init_std²) and rho from N(rho_init_mean, rho_init_std²)."""
        check_posterior_init(mu_init_std, rho_init_mean, rho_init_std)
        for mu, rho in self._pairs():
            mu.normal_(0.0, mu_init_std)
            rho.normal_(rho_init_mean, rho_init_std)

    def set_prior(self, mu: float, sigma: float) -> None:
        """Set the Gaussian prior N(mu, sigma²) shared by all weights and biases of the layer."""
        mu, sigma = check_prior(mu, sigma)
        self.prior_mu.fill_(mu)
        self.prior_sigma.fill_(sigma)

    def _pairs(self) -> list[tuple[Tensor, Tensor]]:
        pairs = [(self.weight_mu, self.weight_rho)]
        if self.bias_mu is not None and self.bias_rho is not None:
            pairs.append((self.bias_mu, self.bias_rho))
        return pairs

    @property
    def weight_sigma(self) -> Tensor:
        return F.softplus(self.weight_rho)

    @property
    def bias_sigma(self) -> Tensor | None:
        return None if self.bias_rho is None else F.softplus(self.bias_rho)

    def _pad(self, x: Tensor) -> Tensor:
        p = self.kernel_size // 2
        if p == 0:
            return x
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        return F.pad(x, (p, p, p, p), mode=mode)

    def forward(self, x: Tensor) -> Tensor:
        x = self._pad(x)
        mean = grouped_conv2d(x, self.weight_mu, self.bias_mu, self.stride, groups=self.groups)
        if not self.sample:
            return mean
        bias_sigma = self.bias_sigma
        var = grouped_conv2d(
            x * x,
            self.weight_sigma.square(),
            None if bias_sigma is None else bias_sigma.square(),
            self.stride,
            groups=self.groups,
        )
        # clamp_min passes no gradient below the floor, so sqrt's infinite slope at 0 never shows up
        return mean + var.clamp_min(_VAR_FLOOR).sqrt() * self.noise(mean)

    def kl(self) -> Tensor:
        """Closed-form KL(q || p) between the posterior and the prior, summed over all parameters."""
        prior_mu, prior_sigma = self.prior_mu, self.prior_sigma
        total = self.weight_mu.new_zeros(())
        for mu, rho in self._pairs():
            sigma2 = F.softplus(rho).square()
            terms = (
                torch.log(prior_sigma)
                - _log_softplus(rho)
                + (sigma2 + (mu - prior_mu).square()) / (2.0 * prior_sigma.square())
                - 0.5
            )
            total = total + terms.sum()
        return total

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, groups={self.groups}, padding_mode={self.padding_mode!r}, "
            f"bias={self.bias_mu is not None}, "
            f"prior=N({self.prior_mu.item():g}, {self.prior_sigma.item():g}²), sample={self.sample}"
        )


def kl_divergence(model: nn.Module) -> Tensor:
    """Sum of the KL terms of all mean-field layers of ``model``; a zero tensor if it has none."""
    terms = [m.kl() for m in model.modules() if isinstance(m, MeanFieldConv2d)]
    if not terms:
        reference = next(model.parameters(), None)
        return torch.zeros((), device=None if reference is None else reference.device)
    return torch.stack(terms).sum()


def set_sampling(model: nn.Module, flag: bool) -> int:
    """Make every mean-field layer of ``model`` sample (True) or use its posterior mean (False).

    Returns the number of layers changed, so callers can tell a model without Bayesian layers.
    """
    layers = [m for m in model.modules() if isinstance(m, MeanFieldConv2d)]
    for m in layers:
        m.sample = bool(flag)
    return len(layers)


def mean_field_conv_factory(prior_mu: float = 0.0, prior_sigma: float = 0.1, **init: float) -> ConvFactory:
    """Conv factory building ``MeanFieldConv2d`` layers with the given prior and initialisation.

    ``init`` may hold mu_init_std, rho_init_mean and rho_init_std; another key is refused here.
    The values are checked by the first layer built (:func:`check_prior`,
    :func:`check_posterior_init`), before any training.
    """
    for key in init:
        if key not in _INIT_KEYS:
            raise ConfigError(f"method.{key}", init[key], "is not a setting; known: " + ", ".join(_INIT_KEYS))

    def build(
        in_ch: int, out_ch: int, kernel: int, stride: int, padding_mode: str, bias: bool
    ) -> MeanFieldConv2d:
        return MeanFieldConv2d(
            in_ch,
            out_ch,
            kernel,
            stride,
            padding_mode,
            bias,
            prior_mu=prior_mu,
            prior_sigma=prior_sigma,
            **init,
        )

    return build


def deterministic_conv_factory() -> ConvFactory:
    """Conv factory building plain "same"-padded ``nn.Conv2d`` layers (the standard DIP network)."""

    def build(in_ch: int, out_ch: int, kernel: int, stride: int, padding_mode: str, bias: bool) -> nn.Conv2d:
        check_kernel("model.kernel_size", kernel)
        check_choice("model.padding", padding_mode, PADDING_MODES)
        return nn.Conv2d(
            in_ch, out_ch, kernel, stride, padding=kernel // 2, padding_mode=padding_mode, bias=bias
        )

    return build
