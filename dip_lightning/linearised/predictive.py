"""The linearised DIP's predictive distribution of the image: exact covariance or posterior samples.

Both describe the Gaussian posterior of the linear model x = f(theta*) + J (theta - theta*) under
y ~ N(A x, sigma_y^2 I) and theta - theta* ~ N(0, Sigma_theta) (the mean is the DIP fit itself):

    Cov[x | y] = S - S A^T K^{-1} A S,   S = J Sigma_theta J^T,   K = sigma_y^2 I + A S A^T.

:func:`exact_covariance` assembles it (N x N, dense linear algebra); :func:`matheron_samples`
draws zero-mean samples with that covariance by Matheron's rule, x0 - S A^T K^{-1} (A x0 + e) with
x0 = J w, w ~ N(0, Sigma_theta), e ~ N(0, sigma_y^2 I), the solve by conjugate gradients (with a
low-rank preconditioner), so only J / J^T products are needed.

These two functions are the interface an evaluation uses: ``exact_covariance`` gives the full
predictive image covariance, ``matheron_samples`` posterior samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from dip_lightning.linearised.measurement import Measurement
from dip_lightning.linearised.prior import BlockPrior

NOISE_X_CORRECTION = 1e-6
"""Added to the diagonal of the predictive image covariance (the reference code's value)."""


class JacobianProducts(Protocol):
    def jvp(self, v: Tensor) -> Tensor: ...
    def vjp(self, u: Tensor) -> Tensor: ...


@dataclass
class ExactPredictive:
    """The predictive covariance of the image (N, N) and the predictive variance of the noise-free
    measurement, diag(A Cov A^T) (M,), both float64."""

    image_cov: Tensor
    measurement_var: Tensor


@torch.no_grad()
def exact_covariance(
    jacobian: Tensor, aj: Tensor, prior: BlockPrior, noise_variance: Tensor
) -> ExactPredictive:
    """The exact predictive covariance from the assembled J (N, P) and A J (M, P)."""
    j_cov = prior.apply_cov(jacobian.double())  # J Sigma (N, P)
    prior_image = j_cov @ jacobian.double().T  # S
    cross = aj.double() @ j_cov.T  # A S (M, N)
    signal = aj.double() @ prior.apply_cov(aj.double()).T  # A S A^T
    k = signal + float(noise_variance) * torch.eye(signal.shape[0], dtype=torch.float64, device=signal.device)
    chol = torch.linalg.cholesky(k)
    solved = torch.cholesky_solve(cross, chol)  # K^{-1} A S
    image_cov = prior_image - cross.T @ solved
    image_cov.diagonal().add_(NOISE_X_CORRECTION)
    measurement_cov = signal - signal @ torch.cholesky_solve(signal, chol)
    return ExactPredictive(image_cov=image_cov, measurement_var=measurement_cov.diagonal().clamp_min(0))


def conjugate_gradients(
    matvec: Callable[[Tensor], Tensor],
    rhs: Tensor,
    precondition: Callable[[Tensor], Tensor] | None = None,
    max_iter: int = 50,
    rtol: float = 1e-4,
) -> tuple[Tensor, int]:
    """Solve K x = b for a batch of right-hand sides b (B, M) (K symmetric positive definite).

    Returns the solution and the iterations used; stops when every relative residual is below
    ``rtol``.
    """
    precondition = precondition or (lambda r: r)
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    z = precondition(r)
    p = z.clone()
    rz = (r * z).sum(dim=1, keepdim=True)
    norm_b = rhs.norm(dim=1, keepdim=True).clamp_min(1e-300)
    for it in range(1, max_iter + 1):
        kp = matvec(p)
        alpha = rz / (p * kp).sum(dim=1, keepdim=True).clamp_min(1e-300)
        x = x + alpha * p
        r = r - alpha * kp
        if bool((r.norm(dim=1, keepdim=True) / norm_b).max() < rtol):
            return x, it
        z = precondition(r)
        rz_new = (r * z).sum(dim=1, keepdim=True)
        p = z + (rz_new / rz.clamp_min(1e-300)) * p
        rz = rz_new
    return x, max_iter


def woodbury_preconditioner(
    phi: Tensor, weight_cov: Tensor, noise_variance: float
) -> Callable[[Tensor], Tensor]:
    """K~^{-1} for K~ = sigma^2 I + Phi Q Phi^T (a low-rank J's observation covariance), by Woodbury
    through the Cholesky factor L of Q: sigma^-2 (I - Phi L (sigma^2 I + L^T Phi^T Phi L)^{-1} L^T Phi^T)."""
    r = weight_cov.shape[0]
    eye = torch.eye(r, dtype=torch.float64, device=weight_cov.device)
    chol_q = torch.linalg.cholesky(weight_cov + 1e-10 * weight_cov.diagonal().mean() * eye)
    phil = phi.double() @ chol_q  # (M, r)
    inner = torch.linalg.cholesky(noise_variance * eye + phil.T @ phil)

    def apply(v: Tensor) -> Tensor:
        t = torch.cholesky_solve((v @ phil).T, inner).T
        return (v - t @ phil.T) / noise_variance

    return apply


@torch.no_grad()
def matheron_samples(
    jacobian: JacobianProducts,
    prior: BlockPrior,
    measurement: Measurement,
    noise_variance: float,
    num_samples: int,
    generator: torch.Generator,
    batch_size: int = 16,
    precondition: Callable[[Tensor], Tensor] | None = None,
    max_iter: int = 50,
    rtol: float = 1e-4,
) -> tuple[Tensor, list[int]]:
    """``num_samples`` zero-mean posterior draws (num_samples, N) of the image and the CG iterations
    of each batch."""

    def prior_image_cov(v: Tensor) -> Tensor:  # S v = J Sigma J^T v
        return jacobian.jvp(prior.apply_cov(jacobian.vjp(v).double()))

    def matvec(v: Tensor) -> Tensor:
        return measurement.forward(prior_image_cov(measurement.adjoint(v))) + noise_variance * v

    samples, iterations = [], []
    for start in range(0, num_samples, batch_size):
        b = min(batch_size, num_samples - start)
        w = prior.sample(b, generator=generator)
        x0 = jacobian.jvp(w).double()
        noise = torch.randn(b, measurement.size, generator=generator, dtype=torch.float64).to(x0.device)
        y0 = measurement.forward(x0) + noise_variance**0.5 * noise
        u, its = conjugate_gradients(matvec, y0, precondition, max_iter, rtol)
        samples.append(x0 - prior_image_cov(measurement.adjoint(u)))
        iterations.append(its)
    return torch.cat(samples), iterations
