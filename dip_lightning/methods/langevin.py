"""Langevin dynamics that sample a posterior: SGLD (Welling and Teh 2011) and pSGLD (Li et al. 2016).

Cheng et al.'s DIP-SGLD adds noise of std 2 lr after each *Adam* step on the *mean* squared error;
its spread depends on Adam's scaling and on the loss's normalisation, so it is a heuristic spread,
not a posterior variance. The optimiser here follows the textbook instead: with U(theta) the full
negative log-posterior,

    theta <- theta - lr G grad U(theta) + N(0, 2 lr G T)

where G = I (SGLD) or G = diag(1 / (eps + sqrt(v))) with v the RMSprop average of squared
gradients (pSGLD, which makes one step size work across layers of very different scales), and T is
a temperature (1: the posterior). The Gaussian weight prior enters through ``weight_decay``, its
precision 1 / sigma_p^2. The caller must make the loss U: the method scales its data term to
N / (2 sigma^2) times the mean squared residual (see :class:`~dip_lightning.methods.sgld.SGLDDIP`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from dip_lightning.errors import check_in_range, check_positive


class LangevinDynamics(torch.optim.Optimizer):
    """One Langevin step per call: gradient drift on U plus Gaussian noise of variance 2 lr G T.

    Args:
        params: the parameters to sample, or parameter groups (a group may set its own
            ``temperature``, e.g. 0 for parameters that are fitted, not sampled).
        lr: the step size (half the epsilon of Welling and Teh).
        weight_decay: precision of the zero-mean Gaussian weight prior.
        preconditioned: use pSGLD's RMSprop preconditioner.
        alpha, eps: RMSprop decay and the preconditioner's floor (pSGLD's 0.99 and 1e-5).
        temperature: T; 1 samples the posterior, 0 is plain (preconditioned) gradient descent.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        preconditioned: bool = True,
        alpha: float = 0.99,
        eps: float = 1e-5,
        temperature: float = 1.0,
    ) -> None:
        for name, value in (("lr", lr), ("weight_decay", weight_decay), ("temperature", temperature)):
            check_positive(f"method.langevin.{name}", value, allow_zero=True)
        check_in_range("method.langevin.alpha", alpha, 0.0, 1.0)
        check_positive("method.langevin.eps", eps)
        defaults = {
            "lr": float(lr),
            "weight_decay": float(weight_decay),
            "preconditioned": bool(preconditioned),
            "alpha": float(alpha),
            "eps": float(eps),
            "temperature": float(temperature),
        }
        super().__init__(params, defaults)
        self.generator: torch.Generator | None = None
        """The noise stream; the method sets a seeded one (None: the global generator)."""

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, temperature = group["lr"], group["temperature"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.add(p, alpha=group["weight_decay"])
                if group["preconditioned"]:
                    state = self.state[p]
                    if "square_avg" not in state:
                        # Started at the first squared gradient, not at zero: a zero average would
                        # make the first preconditioner 1 / eps and the first noise enormous.
                        state["square_avg"] = grad.square()
                    square_avg = state["square_avg"]
                    square_avg.mul_(group["alpha"]).addcmul_(grad, grad, value=1 - group["alpha"])
                    precondition = 1.0 / (group["eps"] + square_avg.sqrt())
                else:
                    precondition = torch.ones_like(p)
                p.addcmul_(precondition, grad, value=-lr)
                if temperature > 0 and lr > 0:
                    noise = torch.randn(p.shape, generator=self.generator, device=p.device, dtype=p.dtype)
                    p.addcmul_((2.0 * lr * temperature * precondition).sqrt(), noise)
        return loss
