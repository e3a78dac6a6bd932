"""What a sweep optimises: metric names and directions from the config, checked before any work.

A typo in ``optimized_metric`` would otherwise only show after a whole trial (every trial would
silently score the penalty), so the names are checked against the metrics a run can write. A
metric that is known but not produced by this configuration (``uce`` of plain DIP, ``psnr``
without a ground truth) is caught by :func:`missing_metrics` after the first trial.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig

from dip_lightning.errors import ConfigError

# Scalars of metrics.json a sweep can optimise, with what they need. Add new metrics here.
METRIC_NAMES: dict[str, str] = {
    "psnr": "PSNR of the reconstruction vs the ground truth (dB)",
    "ssim": "SSIM vs the ground truth",
    "peak_psnr": "best PSNR reached during training (needs a ground truth)",
    "peak_psnr_ema": "best PSNR of the output EMA during training",
    "peak_gap": "peak_psnr - psnr: what the stopping rule lost",
    "peak_step": "step of the PSNR peak",
    "detected_psnr": "PSNR of the output at the stopping rule's detected step",
    "detected_ssim": "SSIM of the output at the detected step",
    "detection_gap": "peak_psnr - detected_psnr: what the stopping rule's choice lost",
    "uce": "uncertainty calibration error vs the ground truth (methods with uncertainty)",
    "nll": "Gaussian NLL of the ground truth (methods with uncertainty)",
    "uce_observation": "calibration error vs the observation (methods with uncertainty)",
    "test_loglik_p1": "log-likelihood of the ground truth per pixel, 1x1 patches (methods with uncertainty)",
    "test_loglik_p2": "the same with 2x2 patches of the sample covariance",
    "test_loglik_p10": "the same with 10x10 patches",
    "test_loglik_full": "the same with the full covariance (images of at most calibration.loglik.full_max_pixels)",
    "mean_epistemic_std": "mean predicted epistemic std",
    "mean_aleatoric_std": "mean predicted aleatoric std",
    "heldout_mse": "mean squared residual on held-out measurement elements (needs validation_fraction > 0)",
    "baseline_psnr": "PSNR of the pseudo-inverse",
    "baseline_ssim": "SSIM of the pseudo-inverse",
    "steps": "training steps run",
    "seconds": "training time",
    "detected_step": "step chosen by the stopping rule",
    "stop_step": "step at which training stopped",
    "best_score": "the stopping rule's score at the detected step",
    "final_score": "the stopping rule's last score",
    "noise_std": "noise level used by the stopping rule",
}
DIRECTIONS = ("maximize", "minimize")


@dataclass(frozen=True)
class Objective:
    """One or more metrics with their directions, and the finite value a failed trial scores."""

    names: tuple[str, ...]
    directions: tuple[str, ...]
    penalty: float

    @property
    def is_multi(self) -> bool:
        return len(self.names) > 1

    def penalty_value(self) -> float | tuple[float, ...]:
        """The worst value per objective: -penalty when maximising, +penalty when minimising."""
        values = tuple(-self.penalty if d == "maximize" else self.penalty for d in self.directions)
        return values if self.is_multi else values[0]


def _as_tuple(value: Any) -> tuple[str, ...]:
    if isinstance(value, ListConfig | list | tuple):
        return tuple(str(v) for v in value)
    return (str(value),)


def objective_from_config(cfg: DictConfig | Mapping[str, Any]) -> Objective:
    """Read and check ``optimized_metric``, ``optimization_direction`` and ``objective_penalty``."""
    names = _as_tuple(cfg.get("optimized_metric", "psnr"))
    directions = _as_tuple(cfg.get("optimization_direction", "maximize"))
    if len(names) != len(directions):
        raise ConfigError(
            "optimization_direction",
            list(directions),
            f"needs one direction per optimized_metric ({len(names)}: {list(names)})",
        )
    for name in names:
        if name not in METRIC_NAMES:
            known = ", ".join(METRIC_NAMES)
            raise ConfigError(
                "optimized_metric", name, f"must be a metric a run writes to metrics.json: {known}"
            )
    for direction in directions:
        if direction not in DIRECTIONS:
            raise ConfigError("optimization_direction", direction, "must be 'maximize' or 'minimize'")
    if "heldout_mse" in names and not float(cfg.get("validation_fraction") or 0.0) > 0:
        raise ConfigError(
            "validation_fraction",
            cfg.get("validation_fraction"),
            "must be > 0 (e.g. 0.1) to optimise heldout_mse: it hides that fraction of the "
            "measurement from training",
        )
    try:
        penalty = abs(float(cfg.get("objective_penalty", 1000.0)))
    except (TypeError, ValueError):
        raise ConfigError("objective_penalty", cfg.get("objective_penalty"), "must be a number") from None
    if not math.isfinite(penalty):
        # A sweeper cannot rank trials by an infinite or NaN value.
        raise ConfigError("objective_penalty", penalty, "must be finite")
    return Objective(names=names, directions=directions, penalty=penalty)


def missing_metrics(objective: Objective, metrics: Mapping[str, Any]) -> list[str]:
    """The objective's metrics that a finished run did not write (or wrote as null)."""
    return [
        n for n in objective.names if not isinstance(metrics.get(n), int | float) or metrics.get(n) is None
    ]


def available_metrics(metrics: Mapping[str, Any]) -> list[str]:
    """The numeric entries of a metrics.json, i.e. what this configuration can optimise."""
    return sorted(k for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool))


def missing_metric_error(objective: Objective, metrics: Mapping[str, Any]) -> ConfigError:
    """The error for a finished run that did not write the objective (``uce`` of plain DIP, ...)."""
    missing = missing_metrics(objective, metrics)
    return ConfigError(
        "optimized_metric",
        missing[0] if len(missing) == 1 else missing,
        "the runs of this configuration do not write it (it needs a method with uncertainty, "
        "a ground truth or validation_fraction > 0); they write: " + ", ".join(available_metrics(metrics)),
    )


def check_values(values: Sequence[float]) -> bool:
    """True when every objective value is finite (what Optuna can store and rank)."""
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)
