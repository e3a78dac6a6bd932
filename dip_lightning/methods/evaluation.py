"""Quality and calibration metrics of a prediction, shared by every method and task.

Calibration is measured twice:

* against the observation, as the MC-dropout and MFVI DIP papers did: the squared residual
  (A mean - y)^2 against the predicted variance pushed through the operator
  (``propagate_variance`` of the total variance), over the measurement elements the operator
  actually observes;
* against the ground truth when it is known: the squared error (mean - x)^2 against the
  epistemic variance, which is the model's uncertainty about the clean image.

The NLL of the ground truth uses the epistemic variance too. Methods without uncertainty (plain
DIP) only get PSNR and SSIM.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dip_lightning.methods.prediction import Prediction
from dip_lightning.metrics.image import psnr, ssim
from dip_lightning.metrics.uncertainty import calibration_curve, gaussian_nll, uce
from dip_lightning.physics.holdout import heldout_mse
from dip_lightning.physics.observation import InverseProblem

UCE_BINS = 15
VARIANCE_FLOOR = 1e-10


def measurement_calibration_pairs(prediction: Prediction, problem: InverseProblem) -> tuple[Tensor, Tensor]:
    """Squared residuals and predicted variances in measurement space, on observed elements only."""
    operator = problem.operator
    residual_sq = (operator(prediction.mean) - problem.observation).pow(2)
    variance = operator.propagate_variance(prediction.total)
    observed = operator.propagate_variance(torch.ones_like(prediction.total)) > 0
    return residual_sq[observed], variance[observed]


def evaluate_prediction(prediction: Prediction, problem: InverseProblem) -> dict[str, float]:
    """PSNR/SSIM of the mean and, for methods with uncertainty, UCE and NLL."""
    metrics: dict[str, float] = {}
    truth = problem.ground_truth
    if truth is not None:
        metrics["psnr"] = float(psnr(prediction.mean, truth).mean())
        metrics["ssim"] = float(ssim(prediction.mean, truth).mean())
    if problem.train_mask is not None:
        metrics["heldout_mse"] = heldout_mse(problem, prediction.mean)
    if not prediction.has_uncertainty:
        return metrics
    try:
        residual_sq, variance = measurement_calibration_pairs(prediction, problem)
        metrics["uce_observation"] = float(uce(residual_sq, variance, bins=UCE_BINS))
    except NotImplementedError:
        pass
    if truth is not None:
        error_sq = (prediction.mean - truth).pow(2)
        epistemic = prediction.epistemic.clamp_min(VARIANCE_FLOOR)
        metrics["uce"] = float(uce(error_sq, epistemic, bins=UCE_BINS))
        metrics["nll"] = float(gaussian_nll(truth, prediction.mean, epistemic))
    metrics["mean_epistemic_std"] = float(prediction.epistemic.sqrt().mean())
    metrics["mean_aleatoric_std"] = float(prediction.aleatoric.sqrt().mean())
    return metrics


def calibration_curves(prediction: Prediction, problem: InverseProblem) -> dict[str, dict]:
    """Per-bin calibration data for the diagrams (observation and, if known, ground truth)."""
    curves: dict[str, dict] = {}
    if not prediction.has_uncertainty:
        return curves
    try:
        residual_sq, variance = measurement_calibration_pairs(prediction, problem)
        curves["observation"] = calibration_curve(residual_sq, variance, bins=UCE_BINS)
    except NotImplementedError:
        pass
    if problem.ground_truth is not None:
        error_sq = (prediction.mean - problem.ground_truth).pow(2)
        curves["ground_truth"] = calibration_curve(error_sq, prediction.epistemic, bins=UCE_BINS)
    return curves
