"""Quality and calibration metrics of a prediction, shared by every method and task.

Calibration is measured twice:

* against the observation, as the MC-dropout and MFVI DIP papers did: the squared residual
  (A mean - y)^2 against the predictive variance of the measurement, over the measurement elements
  that depend on the image. That variance is the variance of A x over the method's samples
  (``Prediction.measurement_epistemic``), plus the predicted noise variance where the network
  predicts one (only for measurements on the image's pixel grid, see ``likelihood=nll``);
* against the ground truth when it is known: the squared error (mean - x)^2 against the
  epistemic variance, which is the model's uncertainty about the clean image.

The NLL of the ground truth uses the epistemic variance too, pixel by pixel; the test
log-likelihood (``test_loglik_*``, :class:`LogLikelihood`) scores the ground truth under the
correlated Gaussian of the samples or of the method's covariance, over p x p patches and, on small
images, the whole image. Methods without uncertainty (plain DIP) only get PSNR and SSIM. The UCE is reported under the configured binning
(:class:`Calibration`, ``calibration=`` config group) and, as extra columns, under each of the
papers' binnings so that our numbers can be set beside theirs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from dip_lightning.errors import ConfigError, check_in_range, check_int, check_positive
from dip_lightning.methods.prediction import Prediction
from dip_lightning.metrics.image import psnr, ssim
from dip_lightning.metrics.loglik import (
    DEFAULT_JITTER,
    BlockCovariance,
    SampleCovariance,
    check_patch_size,
    gaussian_loglik,
)
from dip_lightning.metrics.uncertainty import calibration_curve, gaussian_nll, uce
from dip_lightning.physics.base import no_alignment
from dip_lightning.physics.holdout import heldout_mse, observed_elements
from dip_lightning.physics.observation import InverseProblem

VARIANCE_FLOOR = 1e-10


@dataclass(frozen=True)
class Binning:
    """How the UCE bins pixels: ``bins`` equal-width variance bins between the minimum and the
    maximum, leaving out bins that hold at most ``min_occupancy`` of the pixels."""

    bins: int = 15
    min_occupancy: float = 0.0

    def __post_init__(self) -> None:
        check_int("calibration.bins", self.bins, 1)
        check_in_range("calibration.min_occupancy", self.min_occupancy, 0.0, 1.0)


@dataclass(frozen=True)
class LogLikelihood:
    """The test log-likelihood of Antorán et al.: ``test_loglik_p<p>`` for each patch side in
    ``patch_sizes`` and ``test_loglik_full`` when the image has at most ``full_max_pixels``
    elements (0: never). ``jitter`` is added to every covariance diagonal; ``shrink`` replaces a
    sample covariance C by (C + diag C) / 2 (analytic covariances are used as they are)."""

    patch_sizes: Sequence[int] = (1, 2, 10)
    full_max_pixels: int = 1024
    jitter: float = DEFAULT_JITTER
    shrink: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.patch_sizes, str | bytes) or not isinstance(self.patch_sizes, Sequence):
            raise ConfigError("calibration.loglik.patch_sizes", self.patch_sizes, "a list of integers >= 1")
        sizes = tuple(check_int("calibration.loglik.patch_sizes", p, 1) for p in self.patch_sizes)
        object.__setattr__(self, "patch_sizes", sizes)
        check_int("calibration.loglik.full_max_pixels", self.full_max_pixels, 0)
        check_positive("calibration.loglik.jitter", self.jitter)
        if not isinstance(self.shrink, bool):
            raise ConfigError("calibration.loglik.shrink", self.shrink, "true or false")

    def check_image(self, image_shape: tuple[int, int]) -> None:
        """Every patch must fit in the image: a ConfigError before training otherwise."""
        for size in self.patch_sizes:
            check_patch_size(size, image_shape, "calibration.loglik.patch_sizes")

    def covariance(self, prediction: Prediction) -> BlockCovariance | None:
        """The method's own covariance, else that of its samples; None without either."""
        if prediction.covariance is not None:
            return prediction.covariance
        if prediction.samples is not None and prediction.samples.shape[0] >= 2:
            return SampleCovariance(prediction.samples, shrink=self.shrink)
        return None

    def evaluate(self, prediction: Prediction, truth: Tensor) -> dict[str, float]:
        """``test_loglik_p<p>`` and, for small images, ``test_loglik_full`` (nats per pixel)."""
        covariance = self.covariance(prediction)
        if covariance is None:
            return {}
        metrics = {
            f"test_loglik_p{size}": gaussian_loglik(truth, prediction.mean, covariance, size, self.jitter)
            for size in self.patch_sizes
        }
        if truth.numel() <= self.full_max_pixels:
            metrics["test_loglik_full"] = gaussian_loglik(
                truth, prediction.mean, covariance, None, self.jitter
            )
        return metrics


@dataclass(frozen=True)
class Calibration:
    """The UCE binning of ``uce``/``uce_observation`` and the diagrams, plus named extra binnings
    reported as ``uce_<name>`` and ``uce_observation_<name>`` (e.g. Laves et al.'s 21 bins,
    Toelle et al.'s 10 bins without bins under 2 % occupancy); ``loglik`` configures the test
    log-likelihood."""

    bins: int = 15
    min_occupancy: float = 0.0
    also_report: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    loglik: LogLikelihood = field(default_factory=LogLikelihood)

    @property
    def primary(self) -> Binning:
        return Binning(int(self.bins), float(self.min_occupancy))

    def extra(self) -> dict[str, Binning]:
        extra = {}
        for name, spec in dict(self.also_report or {}).items():
            unknown = set(spec) - {"bins", "min_occupancy"}
            if unknown:
                raise ConfigError(
                    f"calibration.also_report.{name}", dict(spec), "takes only bins and min_occupancy"
                )
            extra[str(name)] = Binning(int(spec.get("bins", 15)), float(spec.get("min_occupancy", 0.0)))
        return extra

    def check(self, image_shape: tuple[int, int] | None = None) -> Calibration:
        """Validate every binning, and the log-likelihood's patches against the image, now,
        before any training."""
        _ = (self.primary, self.extra())
        if not isinstance(self.loglik, LogLikelihood):
            raise ConfigError(
                "calibration.loglik", self.loglik, "a LogLikelihood (_target_ in conf/calibration)"
            )
        if image_shape is not None:
            self.loglik.check_image(image_shape)
        return self


DEFAULT_CALIBRATION = Calibration()


def measurement_calibration_pairs(
    prediction: Prediction, problem: InverseProblem
) -> tuple[Tensor, Tensor] | None:
    """Squared residuals and predictive variances in measurement space, on observed elements only.

    None when the prediction carries no measurement-space variance (it was not made from samples).
    """
    if prediction.measurement_epistemic is None:
        return None
    operator = problem.operator
    residual_sq = (operator(prediction.mean) - problem.observation).abs().pow(2)
    variance = prediction.measurement_epistemic.expand_as(residual_sq)
    if bool(prediction.aleatoric.abs().sum() > 0):
        if not operator.measurement_in_image_space:
            raise ValueError(
                f"a predicted noise variance in image space has no meaning for the measurement of "
                f"{type(operator).__name__}"
            )
        variance = variance + prediction.aleatoric.expand_as(residual_sq)
    observed = observed_elements(problem).expand_as(residual_sq)
    return residual_sq[observed], variance[observed]


def _uce_columns(name: str, error_sq: Tensor, variance: Tensor, calibration: Calibration) -> dict[str, float]:
    primary = calibration.primary
    columns = {name: float(uce(error_sq, variance, primary.bins, primary.min_occupancy))}
    for label, binning in calibration.extra().items():
        columns[f"{name}_{label}"] = float(uce(error_sq, variance, binning.bins, binning.min_occupancy))
    return columns


def aligned_prediction(prediction: Prediction, problem: InverseProblem) -> Prediction:
    """The prediction moved onto the ground truth by the operator's ``alignment`` (the mean, its
    variance maps and its samples alike), so that the scores against the truth ignore what the
    measurement cannot see (phase retrieval's shift and flip). Unchanged without a truth and for
    operators without ambiguities (the default alignment). A method's own ``covariance`` cannot be
    moved by an image map: where the alignment is not the identity it is left out, and the test
    log-likelihood falls back to the (moved) samples."""
    truth = problem.ground_truth
    if truth is None:
        return prediction
    move = problem.operator.alignment(prediction.mean.to(truth), truth)
    if move is no_alignment:
        return prediction
    return dataclasses.replace(
        prediction,
        mean=move(prediction.mean),
        epistemic=move(prediction.epistemic),
        aleatoric=move(prediction.aleatoric),
        samples=None if prediction.samples is None else move(prediction.samples),
        covariance=None,
    )


def evaluate_prediction(
    prediction: Prediction, problem: InverseProblem, calibration: Calibration = DEFAULT_CALIBRATION
) -> dict[str, float]:
    """PSNR/SSIM of the mean and, for methods with uncertainty, UCE and NLL.

    The scores against the truth are those of :func:`aligned_prediction`; the measurement-space
    ones of the prediction as it is (the measurement cannot tell the two apart).
    """
    metrics: dict[str, float] = {}
    truth = problem.ground_truth
    observed = prediction
    prediction = aligned_prediction(prediction, problem)
    if truth is not None:
        metrics["psnr"] = float(psnr(prediction.mean, truth).mean())
        metrics["ssim"] = float(ssim(prediction.mean, truth).mean())
        # Metrics after removing what the problem cannot determine (a shift in blind deblurring).
        metrics.update(problem.operator.image_metrics(prediction.mean, truth))
    metrics.update(problem.operator.operator_metrics())  # fitted operator parameters (a kernel)
    if problem.train_mask is not None:
        metrics["heldout_mse"] = heldout_mse(problem, prediction.mean)
    if not prediction.has_uncertainty:
        return metrics
    pairs = measurement_calibration_pairs(observed, problem)
    if pairs is not None:
        metrics.update(_uce_columns("uce_observation", *pairs, calibration))
    if truth is not None:
        error_sq = (prediction.mean - truth).pow(2)
        epistemic = prediction.epistemic.clamp_min(VARIANCE_FLOOR)
        metrics.update(_uce_columns("uce", error_sq, epistemic, calibration))
        metrics["nll"] = float(gaussian_nll(truth, prediction.mean, epistemic))
        metrics.update(calibration.loglik.evaluate(prediction, truth))
    metrics["mean_epistemic_std"] = float(prediction.epistemic.sqrt().mean())
    metrics["mean_aleatoric_std"] = float(prediction.aleatoric.sqrt().mean())
    return metrics


def calibration_curves(
    prediction: Prediction, problem: InverseProblem, calibration: Calibration = DEFAULT_CALIBRATION
) -> dict[str, dict]:
    """Per-bin calibration data for the diagrams (observation and, if known, ground truth)."""
    curves: dict[str, dict] = {}
    if not prediction.has_uncertainty:
        return curves
    binning = calibration.primary
    pairs = measurement_calibration_pairs(prediction, problem)
    if pairs is not None:
        curves["observation"] = calibration_curve(*pairs, binning.bins, binning.min_occupancy)
    if problem.ground_truth is not None:
        aligned = aligned_prediction(prediction, problem)
        error_sq = (aligned.mean - problem.ground_truth).pow(2)
        prediction = aligned
        curves["ground_truth"] = calibration_curve(
            error_sq, prediction.epistemic, binning.bins, binning.min_occupancy
        )
    return curves
