"""Linearised-Laplace DIP (Antorán, Barbano, Leuschner, Hernández-Lobato and Jin, TMLR 2023).

Training is plain DIP (+TV with ``regulariser=tv``). After training (:meth:`after_fit`) the network
is linearised around its fitted convolution weights, a block-structured Gaussian prior is put on
them (:mod:`dip_lightning.linearised.prior`), its hyperparameters and the noise variance are fitted
by type-II MAP (marginal likelihood, plus the TV-PredCP hyperprior unless ``hyperprior=none``,
the "MLL" variant; :mod:`dip_lightning.linearised.marginal`), and the Gaussian predictive
distribution of the image is read off (:mod:`dip_lightning.linearised.predictive`): exactly from
the assembled Jacobian on small problems, from Matheron samples on large ones. The reported image
is the DIP fit f(theta*) itself; the uncertainty maps are the predictive variance.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from dip_lightning.errors import ConfigError, check_choice, check_int, check_positive
from dip_lightning.linearised.marginal import HYPERPRIORS, MLLSettings, optimise_hyperparameters
from dip_lightning.linearised.model import LinearModel
from dip_lightning.linearised.predictive import exact_covariance, matheron_samples, woodbury_preconditioner
from dip_lightning.linearised.prior import BlockPrior
from dip_lightning.methods.base import DeepImagePrior
from dip_lightning.methods.prediction import Prediction
from dip_lightning.metrics.loglik import DenseCovariance, SampleCovariance

log = logging.getLogger(__name__)

COVARIANCES = ("auto", "exact", "sampling")
PRODUCTS = ("exact", "low_rank")


class LinearisedDIP(DeepImagePrior):
    """DIP(+TV) with a linearised-Laplace predictive distribution computed once after the fit.

    Args:
        hyperprior: ``tv_pred_cp`` (type-II MAP, the paper's method) or ``none`` (type-II maximum
            likelihood, the paper's "MLL" variant).
        covariance: ``exact`` (assemble J, dense linear algebra), ``sampling`` (Matheron samples
            with conjugate gradients and a low-rank Jacobian) or ``auto`` (exact when J has at
            most ``exact_max_entries`` entries).
        mll: ``iterations``, ``lr``, ``min_log_variance``, ``init_noise_variance``,
            ``init_prior_variance``, ``init_lengthscale`` of the hyperparameter fit.
        predcp: ``num_samples`` (prior draws per GP block) and ``scale`` of TV-PredCP.
        sampling: ``rank`` and ``oversampling`` of the low-rank Jacobian, ``products`` (``exact``:
            J products by automatic differentiation, preconditioned by the low-rank J;
            ``low_rank``: the low-rank J throughout), ``cg_max_iter``, ``cg_rtol``, ``batch_size``.
            ``num_samples`` (the method's) is the number of Matheron samples.
    """

    needs_linear_operator = True

    def __init__(
        self,
        *args: Any,
        hyperprior: str = "tv_pred_cp",
        covariance: str = "auto",
        exact_max_entries: float = 6.0e7,
        mll: dict[str, Any] | None = None,
        predcp: dict[str, Any] | None = None,
        sampling: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("reconstruction", "last")
        super().__init__(*args, **kwargs)
        if self.likelihood != "mse":
            raise ConfigError(
                "method.likelihood", self.likelihood, "the linearised DIP's likelihood is Gaussian: use mse"
            )
        self.hyperprior = str(check_choice("method.hyperprior", hyperprior, HYPERPRIORS))
        self.covariance = str(check_choice("method.covariance", covariance, COVARIANCES))
        self.exact_max_entries = check_positive("method.exact_max_entries", exact_max_entries)
        mll = dict(mll or {})
        self.mll = MLLSettings(
            iterations=check_int("method.mll.iterations", mll.get("iterations", 2000), 0),
            lr=check_positive("method.mll.lr", mll.get("lr", 0.01)),
            min_log_variance=float(mll.get("min_log_variance", -4.5)),
            init_noise_variance=check_positive(
                "method.mll.init_noise_variance", mll.get("init_noise_variance", 1.0)
            ),
        )
        self.init_prior_variance = check_positive(
            "method.mll.init_prior_variance", mll.get("init_prior_variance", 1.0)
        )
        self.init_lengthscale = check_positive(
            "method.mll.init_lengthscale", mll.get("init_lengthscale", 0.1)
        )
        predcp = dict(predcp or {})
        self.predcp_samples = check_int("method.predcp.num_samples", predcp.get("num_samples", 50), 1)
        self.predcp_scale = check_positive("method.predcp.scale", predcp.get("scale", 1.0))
        sampling = dict(sampling or {})
        self.rank = check_int("method.sampling.rank", sampling.get("rank", 200), 1)
        self.oversampling = check_int("method.sampling.oversampling", sampling.get("oversampling", 5), 0)
        self.products = str(
            check_choice("method.sampling.products", sampling.get("products", "exact"), PRODUCTS)
        )
        self.cg_max_iter = check_int("method.sampling.cg_max_iter", sampling.get("cg_max_iter", 50), 1)
        self.cg_rtol = check_positive("method.sampling.cg_rtol", sampling.get("cg_rtol", 1e-3))
        self.sample_batch = check_int("method.sampling.batch_size", sampling.get("batch_size", 16), 1)
        self._linear_model: LinearModel | None = None
        self.result: dict[str, Any] | None = None
        """After :meth:`after_fit`: the mean, the variance maps and what the fit found."""

    # ------------------------------------------------------------------ after the fit
    def uses_exact_path(self, num_pixels: int, num_params: int) -> bool:
        if self.covariance != "auto":
            return self.covariance == "exact"
        return num_pixels * num_params <= self.exact_max_entries

    def linear_model(self) -> LinearModel:
        """The linearisation around the current weights (made once; after_fit may run again with
        other hyperparameter settings on the same fit)."""
        if self._linear_model is None:
            self._linear_model = LinearModel(
                self.net,
                self.net_input,
                self.problem,
                lambda out: self.split_output(out)[0],
                self.uses_exact_path,
                self.rank,
                self.oversampling,
                int(self.seed),
            )
        return self._linear_model

    def after_fit(self) -> None:
        """Linearise, fit the hyperparameters and compute the predictive distribution."""
        start = time.perf_counter()
        model = self.linear_model()
        prior = BlockPrior(model.blocks, self.init_prior_variance, self.init_lengthscale).to(self.device)
        generator = torch.Generator().manual_seed(int(self.seed))
        hyperprior = None
        if self.hyperprior == "tv_pred_cp" and prior.gp_index:
            hyperprior = model.tv_pred_cp(prior, self.predcp_samples, self.predcp_scale, generator)
        noise, curve = optimise_hyperparameters(
            prior,
            model.observation,
            model.residual_sq,
            prior.scatter(model.linear.theta),
            self.mll,
            hyperprior,
        )
        measurement, shape, exact = model.measurement, model.shape, model.exact
        mean = model.mean
        if exact:
            predictive = exact_covariance(model.jac, model.aj, prior, noise)
            epistemic = predictive.image_cov.diagonal().reshape(1, *shape)
            measurement_var = predictive.measurement_var
            samples, image_cov = None, predictive.image_cov
        else:
            precondition = woodbury_preconditioner(
                model.phi, model.observation.weight_cov(prior).detach(), float(noise)
            )
            products = model.linear if self.products == "exact" else model.lowrank
            with torch.no_grad():
                samples, iterations = matheron_samples(
                    products,
                    prior,
                    measurement,
                    float(noise),
                    self.num_samples,
                    generator,
                    self.sample_batch,
                    precondition,
                    self.cg_max_iter,
                    self.cg_rtol,
                )
            log.info("lin-DIP: %d Matheron samples, CG iterations per batch %s", self.num_samples, iterations)
            epistemic = samples.var(dim=0, unbiased=False).reshape(1, *shape)
            measurement_var = measurement.forward(samples).var(dim=0, unbiased=False)
            image_cov = None
        self.result = {
            "mean": mean,
            "epistemic": epistemic.to(mean),
            "measurement_var": measurement.to_measurement_shape(measurement_var).to(mean.device),
            "image_cov": image_cov,
            "samples": samples,
            "noise_variance": float(noise),
            "residual_variance": model.residual_sq / model.measurement.size,
            "prior": prior.describe(),
            "path": "exact" if exact else "sampling",
            "mll_loss": curve[-1] if curve else float("nan"),
            "seconds": time.perf_counter() - start,
        }
        log.info(
            "lin-DIP (%s path): noise variance %.3e, %.1f s after the fit",
            self.result["path"],
            float(noise),
            self.result["seconds"],
        )

    # ------------------------------------------------------------------ the prediction
    @torch.no_grad()
    def predict_distribution(self) -> Prediction:
        """Before :meth:`after_fit` (validation during training) the plain DIP output; after it the
        DIP fit with the linearised predictive variance."""
        if self.result is None:
            images, _ = self.sample_outputs(1)
            trajectory = self.trajectory
            if self.reconstruction == "ema" and trajectory is not None and trajectory.ema.steps > 0:
                images = trajectory.ema.value
            zeros = torch.zeros_like(images)
            return Prediction(mean=images, epistemic=zeros, aleatoric=zeros.clone())
        r = self.result
        if r["image_cov"] is not None:
            covariance = DenseCovariance(r["image_cov"])
        else:  # Matheron's samples have mean zero: their covariance is taken about zero
            samples = r["samples"].reshape(-1, *r["mean"].shape[1:])
            covariance = SampleCovariance(samples, centre=torch.zeros_like(samples[0]))
        return Prediction(
            mean=r["mean"],
            epistemic=r["epistemic"],
            aleatoric=torch.zeros_like(r["mean"]),
            measurement_epistemic=r["measurement_var"],
            covariance=covariance,
        )

    def result_metrics(self) -> dict[str, Any]:
        metrics = dict(super().result_metrics())
        if self.result is not None:
            r = self.result
            metrics.update(
                {
                    "lin_dip_path": r["path"],
                    "lin_dip_noise_variance": r["noise_variance"],
                    "lin_dip_residual_variance": r["residual_variance"],
                    "lin_dip_mll_loss": r["mll_loss"],
                    "lin_dip_seconds": r["seconds"],
                    **{f"lin_dip_{k}": v for k, v in r["prior"].items()},
                }
            )
        return metrics
