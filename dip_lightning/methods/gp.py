"""``method=gp``: the Gaussian-process limit of the DIP (Cheng, Gadelha, Maji, Sheldon, CVPR 2019).

A DIP network with random weights and a noise input tends, as its layers get wider, to a
stationary Gaussian process; its covariance follows from the ``model`` group's architecture
(:class:`~dip_lightning.gp.prior.GPPrior`). This method does exact GP regression with that prior
for the problem's linear operator (:func:`~dip_lightning.gp.regression.posterior`): the posterior
mean is the reconstruction and the posterior variance the epistemic uncertainty map. Nothing is
trained: the job's training loop takes no step (:attr:`trains_network` is False) and the
posterior is computed once in :meth:`after_fit`, so a run costs the regression alone (seconds at
128 px) and a signal during it stops at once.

The regression sees the operator through :class:`GPMeasurement`: complex measurements (k-space)
as pairs of reals, and only the measurement elements used for training (``validation_fraction``
holds the others out of the likelihood too).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from dip_lightning.errors import ConfigError, check_int, check_positive
from dip_lightning.gp.prior import GPPrior
from dip_lightning.gp.regression import GPPosterior, GPSettings, posterior
from dip_lightning.methods.base import DeepImagePrior, NetFactory, OptimizerFactory
from dip_lightning.methods.prediction import Prediction, measurement_variance
from dip_lightning.metrics.loglik import DiagonalCovariance, SampleCovariance
from dip_lightning.physics.observation import InverseProblem

log = logging.getLogger(__name__)

__all__ = ["GPMeasurement", "GaussianProcessDIP"]


class GPMeasurement:
    """The problem's operator as the regression sees it: real measurements, training elements only.

    A complex measurement becomes a trailing axis of (real, imaginary) parts; the operator's
    ``adjoint`` is already the adjoint for the real inner product Re<u, v>, so the realified
    operator stays exactly linear and self-consistent. Held-out elements (``train_mask`` 0) are
    reported as unobserved through ``propagate_variance``, which the regression uses to leave
    elements out of its likelihood.
    """

    def __init__(self, problem: InverseProblem) -> None:
        self.operator = problem.operator
        self.is_complex = bool(problem.observation.is_complex())
        self.train_mask = problem.train_mask
        self.image_shape = tuple(problem.image_shape)
        self.measurement_in_image_space = (
            bool(self.operator.measurement_in_image_space) and not self.is_complex
        )
        self.observation = self._real(problem.observation.detach())

    def _real(self, y: Tensor) -> Tensor:
        return torch.view_as_real(y) if self.is_complex else y

    def forward(self, x: Tensor) -> Tensor:
        return self._real(self.operator(x))

    def adjoint(self, y: Tensor) -> Tensor:
        if self.is_complex:
            y = torch.view_as_complex(y.contiguous())
        return self.operator.adjoint(y)

    def propagate_variance(self, variance: Tensor) -> Tensor:
        """Positive where a measurement element depends on the image and is used for training."""
        try:
            observed = self.operator.propagate_variance(variance)
            observed = observed.abs() if observed.is_complex() else observed
        except NotImplementedError:
            if self.train_mask is None:
                raise
            observed = torch.ones(self.train_mask.shape, dtype=variance.dtype, device=variance.device)
        if self.train_mask is not None:
            observed = observed * self.train_mask.to(observed)
        return observed[..., None].expand(*observed.shape, 2) if self.is_complex else observed


def architecture_settings(net: NetFactory) -> dict[str, Any]:
    """The ``model`` group's settings, read from the network factory the job hands every method."""
    if not isinstance(net, functools.partial):
        raise ConfigError(
            "model",
            getattr(net, "__name__", type(net).__name__),
            "method=gp builds its kernel from the model group's SkipNet settings (a model config with "
            "_partial_: true, as conf/model/*.yaml are)",
        )
    return dict(net.keywords)


class GaussianProcessDIP(DeepImagePrior):
    """Exact GP regression with the infinite-width kernel of the configured DIP network.

    Args:
        net: the ``model`` group's network factory; only its settings are read (the kernel follows
            its scales, upsampling, norm and activation; see :mod:`dip_lightning.gp.architecture`).
        optimizer: unused (nothing is trained); accepted so the shared method settings compose.
        noise_std: the observation's Gaussian noise std; None fits it by marginal likelihood.
        prior_scale: multiplier of the kernel; None fits it by marginal likelihood.
        prior_mean: the prior mean; None takes the network output's (0.5 behind the sigmoid).
        variance: ``auto`` (exact up to ``exact_max_pixels`` pixels, Monte Carlo above),
            ``exact``, ``monte_carlo`` (``num_samples`` posterior samples) or ``none``.
        pad_factor, exact_max_pixels, cg_tol, cg_max_iter, probes, lanczos_steps,
            lanczos_max_steps: the regression's settings (:class:`GPSettings`).
        quadrature_nodes: Gauss-Hermite nodes for activations without a closed form.
        **shared: the settings every method takes (``input``, ``num_samples``, ``seed``...). The
            input's ``scale`` and ``channels`` enter the kernel; the training settings have no
            effect. A regulariser of non-zero weight, ``likelihood=nll`` and a pseudo-inverse input are refused.
    """

    trains_network = False
    needs_linear_operator = True

    def __init__(
        self,
        net: NetFactory,
        optimizer: OptimizerFactory,
        noise_std: float | None = None,
        prior_scale: float | None = None,
        prior_mean: float | None = None,
        variance: str = "auto",
        pad_factor: int | None = None,
        exact_max_pixels: int = 4096,
        cg_tol: float = 1e-4,
        cg_max_iter: int = 2000,
        probes: int = 16,
        lanczos_steps: int = 40,
        lanczos_max_steps: int = 400,
        quadrature_nodes: int = 64,
        **shared: Any,
    ) -> None:
        super().__init__(net, optimizer, **shared)
        if self.image_prior is not None and getattr(self.image_prior, "weight", None) != 0:
            raise ConfigError(
                "regulariser",
                type(self.image_prior).__name__,
                "method=gp is exact Gaussian regression, which an image penalty would make "
                "non-Gaussian; use regulariser=none (or regulariser.weight=0)",
            )
        if self.likelihood != "mse":
            raise ConfigError(
                "method.likelihood",
                self.likelihood,
                "method=gp has a Gaussian likelihood of one noise level (method.noise_std); use mse",
            )
        if self.reconstruction != "predictive_mean":
            raise ConfigError(
                "method.reconstruction",
                self.reconstruction,
                "method=gp reports its posterior mean; ema and last need training steps",
            )
        if self.input_settings["kind"] != "noise":
            raise ConfigError(
                "method.input.kind",
                self.input_settings["kind"],
                "the GP limit assumes a stationary random input; use noise",
            )
        self.noise_std = None if noise_std is None else float(check_positive("method.noise_std", noise_std))
        self.settings = GPSettings(
            pad_factor=pad_factor,
            prior_scale=prior_scale,
            variance=variance,
            num_samples=self.num_samples,
            exact_max_pixels=exact_max_pixels,
            cg_tol=cg_tol,
            cg_max_iter=cg_max_iter,
            probes=probes,
            lanczos_steps=lanczos_steps,
            lanczos_max_steps=lanczos_max_steps,
            seed=check_int("method.seed", self.seed, 0),
        )
        self.gp_prior = GPPrior.from_architecture(
            input_scale=self.input_settings["scale"],
            mean=prior_mean,
            quadrature_nodes=quadrature_nodes,
            in_channels=self.input_settings["channels"],
            **architecture_settings(net),
        )
        self.gp_posterior: GPPosterior | None = None
        self.gp_measurement_variance: Tensor | None = None

    # ------------------------------------------------------------------ set-up
    def attach(self, problem: InverseProblem) -> GaussianProcessDIP:
        """Check that the GP can take the problem (image size, a fixed operator) before any work."""
        operator = problem.operator
        self.check_operator(operator)
        if any(p.requires_grad for p in operator.parameters()):
            raise ConfigError(
                "operator",
                type(operator).__name__,
                "method=gp needs a fixed linear operator; this one has parameters fitted with the "
                "image, which only a trained method can fit",
            )
        self.gp_prior.check_shape(tuple(problem.image_shape), "image")
        super().attach(problem)
        return self

    def build_network(self, seed: int) -> nn.Module:
        """No network: the GP is the network's infinite-width limit. An empty module keeps the
        job's execution settings (``model.channels_last``, ``model.compile``) harmless."""
        return nn.Identity()

    def setup(self, stage: str) -> None:
        # Lightning warns that a fit without an optimiser trains nothing, which is the point here.
        warnings.filterwarnings("ignore", message=r".*configure_optimizers.* returned .None.*")

    def configure_optimizers(self) -> None:
        return None

    def on_train_start(self) -> None:
        super().on_train_start()
        self.trainer.should_stop = True  # no training step: the posterior comes in after_fit

    def training_step(self, batch: Any, batch_idx: int) -> None:
        raise RuntimeError("method=gp takes no training step; its posterior is computed in after_fit")

    # ------------------------------------------------------------------ the posterior
    def after_fit(self) -> None:
        """The GP posterior of the image given the observation, once."""
        problem = self.problem
        measured = GPMeasurement(problem)
        result = posterior(
            self.gp_prior, measured, measured.observation, self.noise_std, self.settings, problem.image_shape
        )
        if not result.cg_converged:
            log.warning(
                "method=gp: conjugate gradients stopped after %d iterations (method.cg_max_iter) before "
                "reaching method.cg_tol=%g; the posterior mean is approximate",
                result.cg_iterations,
                self.settings.cg_tol,
            )
        self.gp_measurement_variance = self._measurement_variance(result, measured)
        self.gp_posterior = result
        log.info(
            "method=gp: noise std %.4g%s, prior scale %.4g, variance %s, %d CG iterations",
            result.noise_std,
            "" if self.noise_std is not None else " (fitted)",
            result.prior_scale,
            result.variance_method,
            result.cg_iterations,
        )

    def _measurement_variance(self, result: GPPosterior, measured: GPMeasurement) -> Tensor | None:
        """Variance of A x under the posterior, for the calibration against the observation.

        Exact from the per-pixel variance for operators that measure pixel by pixel (A diagonal);
        otherwise from posterior samples, drawn with the hyperparameters already fitted when the
        per-pixel variance was exact.
        """
        operator = self.problem.operator
        if result.variance is None:
            return None
        if measured.measurement_in_image_space:
            with torch.no_grad():
                return operator.propagate_variance(result.variance)
        samples = result.samples
        if samples is None:
            settings = dataclasses.replace(
                self.settings, variance="monte_carlo", prior_scale=result.prior_scale
            )
            samples = posterior(
                self.gp_prior,
                measured,
                measured.observation,
                result.noise_std,
                settings,
                self.problem.image_shape,
            ).samples
        return measurement_variance(samples, operator)

    @torch.no_grad()
    def predict_distribution(self) -> Prediction:
        """The posterior mean and variance; before :meth:`after_fit` (interrupted) the prior mean."""
        problem = self.problem
        device = problem.observation.device
        zeros = torch.zeros(1, problem.channels, *problem.image_shape, device=device)
        result = self.gp_posterior
        if result is None:
            return Prediction(zeros + self.gp_prior.mean, zeros, zeros.clone())
        variance = zeros if result.variance is None else result.variance.to(zeros)
        # The test log-likelihood's patches see the pixels' correlations through the Monte Carlo
        # samples when they were drawn; the exact path keeps only the per-pixel variance.
        covariance = (
            SampleCovariance(result.samples.to(zeros))
            if result.samples is not None
            else DiagonalCovariance(variance)
        )
        return Prediction(
            mean=result.mean.to(zeros),
            epistemic=variance,
            aleatoric=zeros.clone(),
            measurement_epistemic=self.gp_measurement_variance,
            covariance=covariance,
        )

    def result_metrics(self) -> dict[str, Any]:
        """The fitted hyperparameters and how the posterior was computed (metrics.json ``gp_*``)."""
        result = self.gp_posterior
        if result is None:
            return {}
        return {
            "gp_noise_std": result.noise_std,
            "gp_noise_fitted": self.noise_std is None,
            "gp_prior_scale": result.prior_scale,
            "gp_log_marginal_likelihood": result.log_marginal_likelihood,
            "gp_variance_method": result.variance_method,
            "gp_cg_iterations": result.cg_iterations,
            "gp_cg_converged": result.cg_converged,
        }
