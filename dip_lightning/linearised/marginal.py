"""Type-II MAP of the linearised DIP's hyperparameters: the marginal likelihood and TV-PredCP.

The objective (to minimise) is the Laplace evidence at the fitted weights theta*, as in the
reference code,

    0.5 * ( ||y - A f(theta*)||^2 / sigma_y^2 + theta*^T Sigma_theta^{-1} theta* + log det K_yy ),
    K_yy = sigma_y^2 I + A J Sigma_theta J^T A^T,

plus, with ``hyperprior=tv_pred_cp``, the negative log TV-PredCP hyperprior of every GP block's
lengthscale: kappa_d - log |d kappa_d / d log l_d|, with kappa_d the expected total variation of
images J_d w_d drawn from block d's prior alone (an exponential prior on kappa_d, carried over to
the lengthscale). TV is piecewise linear, so kappa_d's derivatives only go through the Cholesky
factor of the block's kernel; the prior draws are fixed (common random numbers) over the
iterations, which makes the objective deterministic.

``log det K_yy`` comes from one of two observation models: :class:`ExactObservation` precomputes
one (M, M) matrix per block and distance class from the assembled A J (small problems), and
:class:`LowRankObservation` works in the r-dimensional span of a low-rank Jacobian (large ones).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dip_lightning.linearised.prior import BlockPrior

log = logging.getLogger(__name__)

HYPERPRIORS = ("tv_pred_cp", "none")


def class_split(x: Tensor, masks: Tensor) -> list[Tensor]:
    """x (R, F, k^2) -> per distance class, x @ M_c, each (R, F, k^2)."""
    return [torch.einsum("rfa,ab->rfb", x, m.to(x.dtype)) for m in masks]


class ExactObservation:
    """A J Sigma_theta J^T A^T = sum_{d,c} coef_{d,c} H_{d,c}, with H_{d,c} = (A J_d)(I x M_c)(A J_d)^T.

    The H_{d,c} are stacked into one (D, M, M) tensor, so that the signal covariance is one
    contraction with the coefficient vector (cheap to differentiate)."""

    def __init__(self, prior: BlockPrior, aj: Tensor) -> None:
        self.size = aj.shape[0]
        mats = []
        for block, (_, masks) in zip(prior.blocks, prior.classes):
            x = aj[:, block.start : block.stop].reshape(self.size, block.filters, block.positions)
            flat = x.reshape(self.size, -1)
            mats += [(xc.reshape(self.size, -1) @ flat.T).double() for xc in class_split(x, masks)]
        self.h = torch.stack(mats)
        self.eye = torch.eye(self.size, dtype=torch.float64, device=self.h.device)

    def signal_cov(self, prior: BlockPrior) -> Tensor:
        coeffs = torch.cat([prior.class_coefficients(i) for i in range(len(prior.blocks))])
        return torch.tensordot(coeffs.to(self.h.device), self.h, dims=1)

    def log_det(self, prior: BlockPrior, noise_variance: Tensor) -> Tensor:
        coeffs = torch.cat([prior.class_coefficients(i) for i in range(len(prior.blocks))])
        return _LogDetOfSum.apply(coeffs.to(self.h.device), noise_variance, self.h)


class _LogDetOfSum(torch.autograd.Function):
    """log det(noise I + sum_j c_j H_j) with the gradient from K^{-1}: d/dc_j = <K^{-1}, H_j>,
    d/dnoise = tr K^{-1} (several times faster than differentiating through the Cholesky factor)."""

    @staticmethod
    def forward(ctx, coeffs: Tensor, noise: Tensor, h: Tensor) -> Tensor:
        k = torch.tensordot(coeffs, h, dims=1)
        k.diagonal().add_(noise)
        chol = torch.linalg.cholesky(k)
        ctx.save_for_backward(chol, h)
        return 2.0 * torch.log(torch.diagonal(chol)).sum()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        chol, h = ctx.saved_tensors
        inverse = torch.cholesky_inverse(chol)
        grad_coeffs = h.reshape(h.shape[0], -1) @ inverse.reshape(-1)
        return grad * grad_coeffs, grad * torch.trace(inverse), None


class LowRankObservation:
    """A J ~ Phi V^T with Phi = A U S (M, r): log det K_yy by the determinant lemma in r dimensions."""

    def __init__(self, prior: BlockPrior, phi: Tensor, v: Tensor) -> None:
        self.size = phi.shape[0]
        self.rank = phi.shape[1]
        self.gram = (phi.T @ phi).double()
        mats = []
        for block, (_, masks) in zip(prior.blocks, prior.classes):
            vb = v[block.start : block.stop].T.reshape(self.rank, block.filters, block.positions).double()
            flat = vb.reshape(self.rank, -1)
            mats += [xc.reshape(self.rank, -1) @ flat.T for xc in class_split(vb, masks)]
        self.q = torch.stack(mats)

    def weight_cov(self, prior: BlockPrior) -> Tensor:
        """V^T Sigma_theta V (r, r)."""
        coeffs = torch.cat([prior.class_coefficients(i) for i in range(len(prior.blocks))])
        return torch.tensordot(coeffs.to(self.q.device), self.q, dims=1)

    def log_det(self, prior: BlockPrior, noise_variance: Tensor) -> Tensor:
        q = self.weight_cov(prior)
        chol = torch.linalg.cholesky(
            q + 1e-10 * q.diagonal().mean() * torch.eye(self.rank, dtype=torch.float64, device=q.device)
        )
        inner = (
            torch.eye(self.rank, dtype=torch.float64, device=q.device)
            + chol.T @ self.gram @ chol / noise_variance
        )
        return self.size * torch.log(noise_variance) + torch.linalg.slogdet(inner)[1]


def total_variation(images: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Anisotropic TV of each flattened image in ``images`` (S, N), summed over pixels."""
    x = images.reshape(images.shape[0], *shape)
    return (x.diff(dim=-1).abs().sum(dim=(-3, -2, -1))) + (x.diff(dim=-2).abs().sum(dim=(-3, -2, -1)))


class TVPredCP:
    """The TV-PredCP hyperprior on the GP blocks' lengthscales.

    Args:
        prior: the block prior.
        draws: for each GP block index d, C_d (S, R, k^2 k^2): the s-th image draw from block d's
            prior alone is ``to_image(C_d[s] @ vec(L))`` for the Cholesky factor L of the block's
            kernel (see :func:`predcp_draws`).
        to_image, from_image: the linear map from feature coordinates (S, R) to flattened images
            (S, N) and its transpose (identity for an assembled J, U S for a low-rank one).
        shape: (C, H, W) of the image.
        scale: weight of the hyperprior (1 in the reference code).

    TV is 1-homogeneous and piecewise linear: TV(x) = g(x) . x with g its (locally constant)
    gradient, so the expected TV is vec(L) . q with q = mean_s C_s^T g(x_s) held fixed, and its
    derivatives in the hyperparameters only go through the 81-entry Cholesky factor.
    """

    def __init__(
        self,
        prior: BlockPrior,
        draws: dict[int, Tensor],
        to_image: Callable[[Tensor], Tensor],
        from_image: Callable[[Tensor], Tensor],
        shape: tuple[int, ...],
        scale: float = 1.0,
    ) -> None:
        self.draws, self.shape, self.scale = draws, shape, float(scale)
        self.to_image, self.from_image = to_image, from_image

    def _tv_direction(self, draws: Tensor, chol: Tensor) -> Tensor:
        """q = mean_s C_s^T g(x_s), (k^2 k^2,)."""
        with torch.no_grad():
            x = self.to_image(draws @ chol.flatten().to(device=draws.device, dtype=draws.dtype))
        x = x.detach().requires_grad_()
        with torch.enable_grad():
            (g,) = torch.autograd.grad(total_variation(x, self.shape).sum(), x)
        back = self.from_image(g)  # (S, R)
        return (back.to(draws.dtype).reshape(1, -1) @ draws.reshape(-1, draws.shape[-1]))[0] / draws.shape[0]

    def loss(self, prior: BlockPrior) -> Tensor:
        total = torch.zeros((), dtype=torch.float64, device=prior.log_variance.device)
        for i, draws in self.draws.items():
            chol = torch.linalg.cholesky(prior.kernel_matrix(i))
            q = self._tv_direction(draws, chol.detach()).double()
            kappa = chol.flatten() @ q.to(chol.device)
            (grad,) = torch.autograd.grad(kappa, prior.log_lengthscale, create_graph=True)
            slope = grad[prior.gp_index[i]]
            total = total + kappa - torch.log(slope.abs() + 1e-30)
        return self.scale * total


def predcp_draws(
    prior: BlockPrior, jac_columns: Callable[[int], Tensor], num_samples: int, generator: torch.Generator
) -> dict[int, Tensor]:
    """Fixed prior draws for :class:`TVPredCP`: for GP block d, C_d[s, a, b] = sum_f X_d[:, f, a]
    eps[s, f, b] with X_d = ``jac_columns(d)`` (R, F, k^2) and eps ~ N(0, I)."""
    draws = {}
    for i, block in enumerate(prior.blocks):
        if not block.is_gp:
            continue
        x = jac_columns(i).double()
        eps = torch.randn(
            num_samples, block.filters, block.positions, generator=generator, dtype=torch.float64
        )
        # float32: the draws are the largest tensors of the fit, and only enter TV's sign pattern
        draws[i] = torch.einsum("rfa,sfb->srab", x, eps).reshape(num_samples, x.shape[0], -1).float()
    return draws


@dataclass
class MLLSettings:
    """Adam on the log hyperparameters (the reference code: 2000 iterations at 1e-2, prior log
    variances kept above -4.5, noise variance starting at 1)."""

    iterations: int = 2000
    lr: float = 0.01
    min_log_variance: float = -4.5
    init_noise_variance: float = 1.0


def optimise_hyperparameters(
    prior: BlockPrior,
    observation: ExactObservation | LowRankObservation,
    residual_sq: float,
    scatter: list[Tensor],
    settings: MLLSettings,
    predcp: TVPredCP | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[Tensor, list[float]]:
    """Fit the prior's hyperparameters and the noise variance; returns sigma_y^2 and the loss curve."""
    log_noise = nn.Parameter(
        torch.tensor(
            math.log(settings.init_noise_variance), dtype=torch.float64, device=prior.log_variance.device
        )
    )
    params = [prior.log_variance, log_noise] + ([prior.log_lengthscale] if prior.gp_index else [])
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    curve = []
    for step in range(settings.iterations):
        optimizer.zero_grad()
        noise = log_noise.exp()
        loss = 0.5 * (residual_sq / noise + prior.weights_norm(scatter) + observation.log_det(prior, noise))
        if predcp is not None:
            loss = loss + predcp.loss(prior)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            prior.log_variance.clamp_(min=settings.min_log_variance)
        curve.append(float(loss.detach()))
        if step % 200 == 0:
            log.info(
                "lin-DIP hyperparameters, step %d: loss %.4f, noise variance %.3e",
                step,
                curve[-1],
                float(noise.detach()),
            )
        if should_stop is not None and should_stop():
            break
    return log_noise.detach().exp(), curve
