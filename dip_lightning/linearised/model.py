"""The linear model of a fitted network: its Jacobian (assembled or low-rank), the measurement and
the observation covariance's building blocks, made once and reused by every hyperparameter fit."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dip_lightning.linearised.jacobian import LinearisedNetwork, LowRankJacobian
from dip_lightning.linearised.marginal import ExactObservation, LowRankObservation, TVPredCP, predcp_draws
from dip_lightning.linearised.measurement import Measurement
from dip_lightning.linearised.prior import BlockPrior, conv_blocks
from dip_lightning.physics.observation import InverseProblem


class LinearModel:
    """y ~ N(A (f(theta*) + J (theta - theta*)), sigma_y^2 I) for a fitted network.

    Args:
        exact: assemble J (N, P) and A J; otherwise a low-rank J ~ U S V^T of ``rank``.
    """

    def __init__(
        self,
        net: nn.Module,
        net_input: Tensor,
        problem: InverseProblem,
        image_of: Callable[[Tensor], Tensor],
        exact: bool | Callable[[int, int], bool],
        rank: int = 200,
        oversampling: int = 5,
        seed: int = 0,
    ) -> None:
        self.blocks = conv_blocks(net)
        self.linear = LinearisedNetwork(net, net_input, self.blocks, image_of)
        self.measurement = Measurement(problem)
        self.shape = (problem.channels, *problem.image_shape)
        residual = self.measurement.y - self.measurement.forward(self.linear.output[None].detach())[0]
        self.residual_sq = float(residual.pow(2).sum())
        if callable(exact):
            exact = exact(self.linear.num_pixels, self.linear.num_params)
        self.exact = bool(exact)
        template = BlockPrior(self.blocks)
        self.lowrank: LowRankJacobian | None = None
        if self.exact:
            self.jac = self.linear.assemble().detach()
            self.aj = self.measurement.forward(self.jac.T).T  # (M, P)
            self.observation: ExactObservation | LowRankObservation = ExactObservation(template, self.aj)
        else:
            self.lowrank = self.linear.low_rank(rank, oversampling, seed=seed)
            self.phi = self.measurement.forward(self.lowrank.u.T).T * self.lowrank.s  # A U S (M, r)
            self.observation = LowRankObservation(template, self.phi, self.lowrank.v)

    @property
    def mean(self) -> Tensor:
        """The DIP fit f(theta*), (1, C, H, W)."""
        return self.linear.output.detach().reshape(1, *self.shape)

    def block_columns(self, i: int) -> Tensor:
        """Block i's columns of J (assembled: (N, F, k^2)) or of V^T (low-rank: (r, F, k^2))."""
        b = self.blocks[i]
        if self.exact:
            return self.jac[:, b.start : b.stop].reshape(-1, b.filters, b.positions)
        return self.lowrank.v[b.start : b.stop].T.reshape(-1, b.filters, b.positions)

    def to_image(self, features: Tensor) -> Tensor:
        if self.exact:
            return features
        return (features * self.lowrank.s) @ self.lowrank.u.T

    def from_image(self, images: Tensor) -> Tensor:
        if self.exact:
            return images
        return (images.double() @ self.lowrank.u) * self.lowrank.s

    def tv_pred_cp(
        self, prior: BlockPrior, num_samples: int, scale: float, generator: torch.Generator
    ) -> TVPredCP:
        draws = predcp_draws(prior, self.block_columns, num_samples, generator)
        return TVPredCP(prior, draws, self.to_image, self.from_image, self.shape, scale)
