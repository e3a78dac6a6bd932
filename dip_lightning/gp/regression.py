"""Exact GP regression y = A x + e, e ~ N(0, noise_std² I), x ~ GP(mean, scale * K), K stationary.

* **Denoising** (A = I) on a periodic grid is diagonal in Fourier space: the posterior mean is the
  Wiener filter m + F^-1[s S / (s S + v) F(y - m)] (S the kernel's power spectrum) and the
  posterior variance is the same at every pixel, mean_f(s S v / (s S + v)).
* **Any linear operator** given by ``forward`` and ``adjoint`` (masks, downsampling, CT): the
  image is embedded in a torus ``pad_factor`` times its size (the prior's covariance is exact on
  the image for offsets shorter than the torus minus the image, so no wrap-around when the factor
  is 2) and A acts on the crop. The posterior mean is m + s K A^T alpha with alpha from conjugate
  gradients on (s A K A^T + v I) alpha = y - A m. The per-pixel variance is exact (dense
  Cholesky) for images of at most ``exact_max_pixels`` pixels, otherwise a Monte Carlo estimate
  from ``num_samples`` posterior samples drawn by Matheron's rule ("sample-then-optimise"): a
  prior draw f (by FFT) and a noise draw e, x = f + s K A^T (s A K A^T + v I)^-1 (y - A f - e), all
  solved in the same batched CG run as the mean; the variance is the samples' mean squared
  deviation from the mean (relative standard error sqrt(2 / num_samples)).
* **Unknown noise level or prior scale** (None): fitted by maximising the marginal likelihood, see
  :mod:`dip_lightning.gp.hyper`.

Measurement elements that do not depend on the image (the holes of an inpainting mask, found with
``propagate_variance``) are left out of the likelihood. Channels are independent GPs sharing the
kernel and hyperparameters; the operator must act on each channel alike.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from dip_lightning.errors import ConfigError, check_choice, check_int, check_positive
from dip_lightning.gp.hyper import Spectral, fit_hyperparameters
from dip_lightning.gp.prior import GPPrior
from dip_lightning.gp.solvers import Lanczos, conjugate_gradient

__all__ = ["VARIANCE_METHODS", "GPPosterior", "GPSettings", "posterior"]

VARIANCE_METHODS: tuple[str, ...] = ("auto", "exact", "monte_carlo", "none")


@dataclass(frozen=True)
class GPSettings:
    """Settings of the regression; names as they will appear under ``method.``.

    ``pad_factor`` None: 1 (periodic, closed form) for denoising, 2 otherwise. ``prior_scale``
    None: fitted. ``variance``: ``auto`` is exact up to ``exact_max_pixels`` pixels and Monte
    Carlo above. ``probes`` and ``lanczos_steps`` set the stochastic log-determinant,
    ``lanczos_max_steps`` bounds the Lanczos run for the quadratic form; ``seed`` seeds the probes
    and samples (a private generator: the global random state is not touched).
    """

    pad_factor: int | None = None
    prior_scale: float | None = None
    variance: str = "auto"
    num_samples: int = 32
    exact_max_pixels: int = 4096
    cg_tol: float = 1e-4
    cg_max_iter: int = 2000
    probes: int = 16
    lanczos_steps: int = 40
    lanczos_max_steps: int = 400
    seed: int = 0

    def __post_init__(self) -> None:
        if self.pad_factor is not None:
            check_int("method.pad_factor", self.pad_factor, 1)
        if self.prior_scale is not None:
            check_positive("method.prior_scale", self.prior_scale)
        check_choice("method.variance", self.variance, VARIANCE_METHODS)
        check_int("method.num_samples", self.num_samples, 2)
        check_int("method.exact_max_pixels", self.exact_max_pixels, 0)
        check_positive("method.cg_tol", self.cg_tol)
        check_int("method.cg_max_iter", self.cg_max_iter, 1)
        check_int("method.probes", self.probes, 1)
        check_int("method.lanczos_steps", self.lanczos_steps, 2)
        check_int("method.lanczos_max_steps", self.lanczos_max_steps, 2)
        check_int("method.seed", self.seed, 0)


@dataclass(frozen=True)
class GPPosterior:
    """Posterior mean and per-pixel variance (1, C, H, W) and how they were obtained.

    ``variance_method``: closed_form, exact, monte_carlo or none (then ``variance`` is None);
    ``samples`` (S, C, H, W) are the Monte Carlo posterior samples when drawn.
    """

    mean: Tensor
    variance: Tensor | None
    noise_std: float
    prior_scale: float
    log_marginal_likelihood: float
    variance_method: str
    cg_iterations: int = 0
    cg_converged: bool = True
    samples: Tensor | None = None


# ----------------------------------------------------------------------------------- helpers
def _image_shape(operator: object, observation: Tensor, given: tuple[int, int] | None) -> tuple[int, int]:
    shape = given if given is not None else getattr(operator, "image_shape", None)
    if shape is None and getattr(operator, "measurement_in_image_space", False):
        shape = tuple(observation.shape[-2:])
    if shape is None:
        raise ConfigError("operator.image_shape", None, "the GP posterior needs the image size (H, W)")
    return int(shape[0]), int(shape[1])


def _is_identity(operator: object, shape: tuple[int, ...], observation: Tensor) -> bool:
    """Whether A = I, found by applying A and A^T to a random image (no type check)."""
    probe = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    probe = probe.to(observation.device)
    with torch.no_grad():
        image = operator.forward(probe)  # type: ignore[attr-defined]
        if image.shape != probe.shape or not torch.allclose(image, probe, rtol=0, atol=1e-12):
            return False
        return bool(torch.allclose(operator.adjoint(probe), probe, rtol=0, atol=1e-12))  # type: ignore[attr-defined]


def _observed(operator: object, ones: Tensor, observation: Tensor) -> Tensor:
    """1.0 where the measurement depends on the image, else 0 (all 1 if the operator cannot say)."""
    try:
        with torch.no_grad():
            observed = operator.propagate_variance(ones) > 0  # type: ignore[attr-defined]
        if observed.shape == observation.shape:
            return observed.to(torch.float64)
    except NotImplementedError:
        pass
    return torch.ones_like(observation, dtype=torch.float64)


def _check_inputs(prior: GPPrior, observation: Tensor, noise_std: float | None) -> None:
    if not isinstance(observation, Tensor) or observation.ndim < 3 or observation.shape[0] != 1:
        shape = tuple(observation.shape) if isinstance(observation, Tensor) else observation
        raise ConfigError("observation", shape, "must be a tensor (1, C, ...) holding one measurement")
    if not bool(torch.isfinite(observation).all()):
        raise ConfigError("observation", "non-finite values", "must hold finite values only")
    if noise_std is not None:
        check_positive("method.noise_std", noise_std)
    if not isinstance(prior, GPPrior):
        raise ConfigError("method.prior", type(prior).__name__, "must be a GPPrior")


# ---------------------------------------------------------------------------------- denoising
def _denoise(
    prior: GPPrior, y: Tensor, noise_var: float | None, scale: float | None, variance: str
) -> GPPosterior:
    shape = (y.shape[-2], y.shape[-1])
    count = y[0].numel()
    spectrum = prior.spectrum(shape).to(y.device)
    full = torch.fft.fft2(prior.covariance(shape).to(y.device)).real.clamp_min(0.0)
    residual = y - prior.mean
    power = torch.fft.fft2(residual).abs().square() / (shape[0] * shape[1])  # (1, C, H, W)
    channels = y.shape[1]
    spec = Spectral.from_tensors(
        (full.expand_as(power[0]), power[0]), (full.expand_as(power[0]), torch.ones_like(power[0])), count
    )
    fit = fit_hyperparameters(spec, scale, noise_var)
    s, v = fit.scale, fit.noise_var
    gain = s * spectrum / (s * spectrum + v)
    mean = prior.mean + torch.fft.irfft2(torch.fft.rfft2(residual) * gain, s=shape)
    if variance == "none":
        return GPPosterior(mean, None, math.sqrt(v), s, fit.log_likelihood, "none")
    pixel_var = float((s * full * v / (s * full + v)).mean())
    constant = torch.full((1, channels, *shape), pixel_var, dtype=torch.float64, device=y.device)
    return GPPosterior(mean, constant, math.sqrt(v), s, fit.log_likelihood, "closed_form")


# ---------------------------------------------------------------------------- general operators
class _Problem:
    """The operator on the padded torus: A_pad = D A crop, with D the observed-element mask."""

    def __init__(self, prior: GPPrior, operator: object, y: Tensor, image: tuple[int, int], pad: int) -> None:
        self.prior, self.operator, self.image = prior, operator, image
        self.grid = (image[0] * pad, image[1] * pad)
        self.channels = y.shape[1]
        ones = torch.ones(1, self.channels, *image, dtype=torch.float64, device=y.device)
        self.observed = _observed(operator, ones, y)
        self.count = int(self.observed.sum())
        self.residual = self.observed * (y - self.forward_image(ones * prior.mean))

    def forward_image(self, x: Tensor) -> Tensor:
        return self.observed * self.operator.forward(x)  # type: ignore[attr-defined]

    def adjoint_grid(self, y: Tensor) -> Tensor:
        image = self.operator.adjoint(self.observed * y)  # type: ignore[attr-defined]
        return torch.nn.functional.pad(
            image, (0, self.grid[1] - self.image[1], 0, self.grid[0] - self.image[0])
        )

    def crop(self, x: Tensor) -> Tensor:
        return x[..., : self.image[0], : self.image[1]]

    def data_cov(self, y: Tensor) -> Tensor:
        """B0 y = D A K A^T D y (unscaled)."""
        return self.forward_image(self.crop(self.prior.apply_covariance(self.adjoint_grid(y))))

    def preconditioner(self, scale: float, noise_var: float) -> Callable[[Tensor], Tensor] | None:
        """An approximate inverse of s D A K A^T D + v I for operators that measure pixel by pixel.

        With A = diag(a) (identity, masks; a = A 1), D A K A^T D is close to the circulant
        mean(a)² K + (mean(a²) - mean(a)²) K(0) I: exact for A = I up to the padding, and the
        average over random masks. It is inverted by FFT on the image grid; unobserved elements,
        decoupled in the system, get 1 / v. None for other operators.
        """
        shape = tuple(self.residual.shape[-2:])
        if not getattr(self.operator, "measurement_in_image_space", False) or shape != self.image:
            return None
        ones = torch.ones(1, self.channels, *self.image, dtype=torch.float64, device=self.residual.device)
        diagonal = self.forward_image(ones)
        first = diagonal.mean((-2, -1), keepdim=True)
        second = diagonal.square().mean((-2, -1), keepdim=True)
        spectrum = self.prior.spectrum(self.image).to(self.residual.device)
        variance = float(self.prior.covariance(self.image)[0, 0])
        denominator = (
            scale * first.square() * spectrum + scale * (second - first.square()) * variance + noise_var
        )
        observed = self.observed

        def apply(r: Tensor) -> Tensor:
            solved = torch.fft.irfft2(torch.fft.rfft2(observed * r) / denominator, s=self.image)
            return observed * solved + (1 - observed) * r / noise_var

        return apply

    def dense(self) -> tuple[Tensor, Tensor]:
        """Dense K on the image pixels (N, N) and the single-channel operator matrix (M1, N)."""
        height, width = self.image
        cov = self.prior.covariance(self.grid).to(self.residual.device)
        yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        yy, xx = yy.reshape(-1), xx.reshape(-1)
        k = cov[(yy[:, None] - yy[None]) % self.grid[0], (xx[:, None] - xx[None]) % self.grid[1]]
        basis = torch.eye(height * width, dtype=torch.float64, device=cov.device).view(-1, 1, height, width)
        with torch.no_grad():
            matrix = self.operator.forward(basis).reshape(height * width, -1).T  # type: ignore[attr-defined]
        return k, matrix


SPARSE_DENSITY = 0.25
"""Operator matrices with fewer non-zero entries than this fraction are multiplied as sparse ones."""


def _channel_products(problem: _Problem, dense: tuple[Tensor, Tensor], c: int) -> tuple[Tensor, Tensor]:
    """G K and G K G^T for channel ``c`` (G: the observed rows of the operator matrix), computed once.

    Masks, downsampling and ray transforms have a few non-zeros per row, so a sparse G turns the
    two (M, N) x (N, N) products into O(nnz N) work (at 64 px inpainting: 13 s to under 1 s).
    """
    cache = problem.__dict__.setdefault("_products", {})
    if c not in cache:
        k, matrix = dense
        g = matrix[problem.observed[0, c].reshape(-1) > 0]
        if g.numel() and float((g != 0).double().mean()) < SPARSE_DENSITY:
            sparse = g.to_sparse()
            gk = torch.sparse.mm(sparse, k)
            gkg = torch.sparse.mm(sparse, gk.T.contiguous()).T  # G (G K)^T = G K G^T, K symmetric
        else:
            gk = g @ k
            gkg = gk @ g.T
        cache[c] = (gk, 0.5 * (gkg + gkg.T))
    return cache[c]


def _spectral(problem: _Problem, settings: GPSettings, dense: tuple[Tensor, Tensor] | None, noise_var, scale):
    if dense is not None:
        nodes, quad_w, ones = [], [], []
        for c in range(problem.channels):
            rows = problem.observed[0, c].reshape(-1) > 0
            theta, vectors = torch.linalg.eigh(_channel_products(problem, dense, c)[1])
            r = problem.residual[0, c].reshape(-1)[rows]
            nodes.append(theta.clamp_min(0.0))
            quad_w.append((vectors.T @ r).square())
            ones.append(torch.ones_like(theta))
        theta = torch.cat(nodes)
        return Spectral.from_tensors((theta, torch.cat(quad_w)), (theta, torch.cat(ones)), problem.count)
    generator = torch.Generator().manual_seed(settings.seed + 1)
    signs = torch.randint(0, 2, (settings.probes, *problem.residual.shape[1:]), generator=generator)
    probes = (2.0 * signs - 1.0).to(problem.residual) * problem.observed
    lanczos = Lanczos(problem.data_cov, probes)
    lanczos.extend(settings.lanczos_steps)
    logdet_nodes, logdet_w = zip(*(lanczos.quadrature(i) for i in range(settings.probes)))
    logdet = (torch.cat(logdet_nodes), torch.cat(logdet_w) / settings.probes)
    quadratic = Lanczos(problem.data_cov, problem.residual)
    while True:  # grow the Krylov space until the CG solve at the fitted noise level has converged
        quadratic.extend(min(20, settings.lanczos_max_steps - quadratic.steps))
        spec = Spectral.from_tensors(quadratic.quadrature(0), logdet, problem.count)
        ratio = fit_hyperparameters(spec, scale, noise_var).ratio
        done = quadratic.shifted_residual(0, ratio / 4) < 1e-3
        if done or quadratic.steps >= settings.lanczos_max_steps or not bool(quadratic.active[0]):
            return spec


def _exact_variance(problem: _Problem, dense: tuple[Tensor, Tensor], s: float, v: float) -> Tensor:
    k = dense[0]
    out = []
    for c in range(problem.channels):
        gk, gkg = _channel_products(problem, dense, c)
        chol = torch.linalg.cholesky(s * gkg + v * torch.eye(gkg.shape[0], dtype=k.dtype, device=k.device))
        half = torch.linalg.solve_triangular(chol, s * gk, upper=False)
        out.append((s * k.diagonal() - half.square().sum(0)).clamp_min(0.0).view(problem.image))
    return torch.stack(out)[None]


def _general(
    problem: _Problem, settings: GPSettings, noise_var: float | None, scale: float | None
) -> GPPosterior:
    small = problem.image[0] * problem.image[1] <= settings.exact_max_pixels
    method = settings.variance if settings.variance != "auto" else ("exact" if small else "monte_carlo")
    fitting = noise_var is None or scale is None
    dense = problem.dense() if method == "exact" or (small and fitting) else None
    if fitting:
        fit = fit_hyperparameters(_spectral(problem, settings, dense, noise_var, scale), scale, noise_var)
        s, v, loglik = fit.scale, fit.noise_var, fit.log_likelihood
    else:
        s, v, loglik = float(scale), float(noise_var), float("nan")  # type: ignore[arg-type]
    rhs, prior_draws = [problem.residual], None
    if method == "monte_carlo":  # Matheron's rule: prior draw f, noise draw e, rhs D (y - A f - e)
        generator = torch.Generator().manual_seed(settings.seed)
        shape = (settings.num_samples, problem.channels, *problem.grid)
        white = torch.randn(shape, generator=generator, dtype=torch.float64).to(problem.residual.device)
        prior_draws = math.sqrt(s) * problem.prior.apply_covariance(white, 0.5)  # minus the mean
        noise = torch.randn(settings.num_samples, *problem.residual.shape[1:], generator=generator)
        noise = problem.observed * math.sqrt(v) * noise.to(problem.residual)
        rhs.append(problem.residual - problem.forward_image(problem.crop(prior_draws)) - noise)
    solved = conjugate_gradient(
        lambda a: s * problem.data_cov(a) + v * a,
        torch.cat(rhs),
        settings.cg_tol,
        settings.cg_max_iter,
        problem.preconditioner(s, v),
    )
    update = problem.crop(s * problem.prior.apply_covariance(problem.adjoint_grid(solved.solution)))
    mean = problem.prior.mean + update[:1]
    variance, samples = None, None
    if method == "exact":
        variance = _exact_variance(problem, dense, s, v)  # type: ignore[arg-type]
    elif method == "monte_carlo":
        samples = problem.prior.mean + problem.crop(prior_draws) + update[1:]  # type: ignore[arg-type]
        variance = (samples - mean).square().mean(0, keepdim=True)
    return GPPosterior(
        mean, variance, math.sqrt(v), s, loglik, method, solved.iterations, solved.converged, samples
    )


def posterior(
    prior: GPPrior,
    operator: object,
    observation: Tensor,
    noise_std: float | None = None,
    settings: GPSettings | None = None,
    image_shape: tuple[int, int] | None = None,
) -> GPPosterior:
    """The GP posterior of the image given ``observation`` = A x + noise.

    Args:
        prior: the GP prior (e.g. ``GPPrior.from_architecture(**model_config)``).
        operator: anything with ``forward`` and ``adjoint`` on (B, C, H, W) images (a
            ``ForwardOperator``); ``propagate_variance``, when it has one, marks unobserved elements.
        observation: the measurement (1, C, ...).
        noise_std: the noise standard deviation; None fits it by maximum marginal likelihood.
        settings: :class:`GPSettings` (defaults when None).
        image_shape: (H, W) when the operator does not say.
    """
    settings = settings if settings is not None else GPSettings()
    _check_inputs(prior, observation, noise_std)
    y = observation.detach().to(torch.float64)
    image = _image_shape(operator, y, image_shape)
    prior.check_shape(image, "image")
    noise_var = None if noise_std is None else float(noise_std) ** 2
    channels = y.shape[1]
    identity = _is_identity(operator, (1, channels, *image), y)
    pad = settings.pad_factor if settings.pad_factor is not None else (1 if identity else 2)
    if identity and pad == 1:
        result = _denoise(prior, y, noise_var, settings.prior_scale, settings.variance)
    else:
        result = _general(_Problem(prior, operator, y, image, pad), settings, noise_var, settings.prior_scale)
    dtype = observation.dtype if observation.dtype.is_floating_point else torch.float32
    return dataclasses.replace(
        result,
        mean=result.mean.to(dtype),
        variance=None if result.variance is None else result.variance.to(dtype),
        samples=None if result.samples is None else result.samples.to(dtype),
    )
