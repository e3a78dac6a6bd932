"""Mean-field variational inference DIP (Toelle et al. 2021).

Every convolution is a Gaussian mean-field layer sampled with the local reparameterisation trick;
the loss is the likelihood plus ``kl_weight`` times the closed-form KL to a Gaussian weight prior
N(prior_mu, prior_sigma^2). Each item of a batch gets its own weight noise, so the T Monte Carlo
samples of the predictive distribution are one batched forward pass.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from dip_lightning.errors import check_positive
from dip_lightning.methods.base import DeepImagePrior
from dip_lightning.models.bayesian import (
    check_posterior_init,
    check_prior,
    kl_divergence,
    mean_field_conv_factory,
)


class MeanFieldDIP(DeepImagePrior):
    """DIP with a Gaussian mean-field posterior over all convolution weights and biases.

    Args:
        prior_mu, prior_sigma: the Gaussian weight prior N(mu, sigma^2), from the ``prior`` config
            group (``prior.mu``, ``prior.sigma``) so that sweeps and tasks set it in one place.
        kl_weight: beta, the weight of the KL term (1e-6 in the original).
        mu_init_std, rho_init_mean, rho_init_std: posterior initialisation, mu ~ N(0, 0.1^2) and
            rho ~ N(-3, 0.1^2) in the original; the posterior std is softplus(rho).

    With ``likelihood=mse`` the network has no log-precision channel and the run reports no
    aleatoric variance; ``likelihood=nll`` adds the channel and trains it.
    """

    supports_replicates = True  # the weight noise is drawn through the replicas' own streams

    def __init__(
        self,
        *args: Any,
        prior_mu: float = 0.0,
        prior_sigma: float = 0.05,
        kl_weight: float = 1e-6,
        mu_init_std: float = 0.1,
        rho_init_mean: float = -3.0,
        rho_init_std: float = 0.1,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("reconstruction", "predictive_mean")
        kwargs.setdefault("num_samples", 25)
        super().__init__(*args, **kwargs)
        self.prior_mu, self.prior_sigma = check_prior(prior_mu, prior_sigma)
        self.kl_weight = float(check_positive("method.kl_weight", kl_weight, allow_zero=True))
        check_posterior_init(mu_init_std, rho_init_mean, rho_init_std)
        self.posterior_init = {
            "mu_init_std": float(mu_init_std),
            "rho_init_mean": float(rho_init_mean),
            "rho_init_std": float(rho_init_std),
        }

    def network_kwargs(self) -> dict[str, Any]:
        conv = mean_field_conv_factory(self.prior_mu, self.prior_sigma, **self.posterior_init)
        return {**super().network_kwargs(), "conv": conv}

    def extra_loss(self) -> Tensor:
        return self.kl_weight * kl_divergence(self.net)
