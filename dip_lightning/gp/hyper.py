"""Prior scale and noise level by maximising the marginal likelihood of the observation.

With the unscaled data covariance B0 = A K A^T (on the observed measurement elements, M of them)
and residual r = y - A m, the observation is N(0, s B0 + v I) for prior scale s and noise variance
v. Its log-likelihood needs the quadratic form r^T (s B0 + v I)^{-1} r and log det(s B0 + v I);
both are spectral sums sum_j w_j f(t_j) over B0's eigenvalues t_j, which we hold as quadrature
nodes and weights:

* denoising with a periodic prior: the exact eigenvalues (the kernel's power spectrum) with the
  residual's Fourier power as weights;
* small problems: the eigen-decomposition of the dense B0;
* otherwise Lanczos quadrature: a Lanczos run started at r for the quadratic form (run until the
  matching CG solve at the fitted noise level has converged) and stochastic Lanczos quadrature
  with Rademacher probes (Hutchinson's estimator) for the log-determinant.

Writing v = s * e, the likelihood is maximised over the single ratio e on a log grid refined by
Brent's method; for each e the free scale has the closed form s = r^T (B0 + e I)^{-1} r / M, and a
known scale or noise level fixes s = scale or s = v / e. So every case is a 1-D search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from torch import Tensor

__all__ = ["Hyperparameters", "Spectral", "fit_hyperparameters", "log_marginal_likelihood"]

_GRID = 241
_RATIO_RANGE = (1e-7, 1e3)  # e relative to the mean eigenvalue of B0


@dataclass(frozen=True)
class Spectral:
    """r^T f(B0) r ~ sum(quad_weights * f(quad_nodes)); log det f(B0) ~ sum(logdet_weights *
    f(logdet_nodes)); ``count`` observed measurement elements."""

    quad_nodes: np.ndarray
    quad_weights: np.ndarray
    logdet_nodes: np.ndarray
    logdet_weights: np.ndarray
    count: int

    @classmethod
    def from_tensors(cls, quad: tuple[Tensor, Tensor], logdet: tuple[Tensor, Tensor], count: int) -> Spectral:
        def arr(t: Tensor) -> np.ndarray:
            return t.detach().to("cpu").double().numpy().reshape(-1)

        return cls(arr(quad[0]), arr(quad[1]), arr(logdet[0]), arr(logdet[1]), int(count))

    @property
    def mean_eigenvalue(self) -> float:
        return float((self.logdet_weights * self.logdet_nodes).sum() / max(self.logdet_weights.sum(), 1e-300))


@dataclass(frozen=True)
class Hyperparameters:
    """Fitted prior scale s and noise variance v, the log marginal likelihood there, and whether the
    optimum lies on the edge of the searched range (then the data barely determine it)."""

    scale: float
    noise_var: float
    log_likelihood: float
    at_bound: bool = False

    @property
    def ratio(self) -> float:
        return self.noise_var / self.scale


def _terms(spec: Spectral, ratios: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quadratic form and log-det of B0 + e I for each ratio e (vectorised over e)."""
    e = ratios[:, None]
    quad = (spec.quad_weights[None] / (spec.quad_nodes[None] + e)).sum(1)
    logdet = (spec.logdet_weights[None] * np.log(spec.logdet_nodes[None] + e)).sum(1)
    return quad, logdet


def _profile(spec: Spectral, ratios: np.ndarray, scale: float | None, noise_var: float | None) -> tuple:
    quad, logdet = _terms(spec, ratios)
    m = spec.count
    if scale is not None:
        s = np.full_like(ratios, scale)
    elif noise_var is not None:
        s = noise_var / ratios
    else:
        s = np.maximum(quad / m, 1e-300)
    loglik = -0.5 * (quad / s + m * np.log(s) + logdet + m * math.log(2 * math.pi))
    return loglik, s


def log_marginal_likelihood(spec: Spectral, scale: float, noise_var: float) -> float:
    """log N(r; 0, scale B0 + noise_var I) from the spectral sums."""
    loglik, _ = _profile(spec, np.array([noise_var / scale]), scale, None)
    return float(loglik[0])


def fit_hyperparameters(spec: Spectral, scale: float | None, noise_var: float | None) -> Hyperparameters:
    """Maximise the marginal likelihood over whichever of ``scale`` and ``noise_var`` is None."""
    if scale is not None and noise_var is not None:
        return Hyperparameters(scale, noise_var, log_marginal_likelihood(spec, scale, noise_var))
    tau = max(spec.mean_eigenvalue, 1e-300)
    logs = np.linspace(math.log(_RATIO_RANGE[0] * tau), math.log(_RATIO_RANGE[1] * tau), _GRID)
    loglik, _ = _profile(spec, np.exp(logs), scale, noise_var)
    best = int(np.nanargmax(loglik))
    low, high = logs[max(best - 1, 0)], logs[min(best + 1, _GRID - 1)]

    def negative(log_ratio: float) -> float:
        return -float(_profile(spec, np.array([math.exp(log_ratio)]), scale, noise_var)[0][0])

    found = minimize_scalar(negative, bounds=(low, high), method="bounded", options={"xatol": 1e-6})
    ratio = math.exp(found.x if -found.fun >= loglik[best] else logs[best])
    value, s = _profile(spec, np.array([ratio]), scale, noise_var)
    scale_fit = float(s[0])
    noise_fit = noise_var if noise_var is not None else scale_fit * ratio
    return Hyperparameters(scale_fit, float(noise_fit), float(value[0]), best in (0, _GRID - 1))
