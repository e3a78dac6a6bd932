"""Plain Deep Image Prior (Ulyanov et al.): the shared loop with no extra terms."""

from __future__ import annotations

from dip_lightning.methods.base import DeepImagePrior


class DIP(DeepImagePrior):
    """Adam on ||A f(z) - y||^2 with input perturbation; reports the output EMA by default."""

    supports_replicates = True
