"""What a replicated run adds to its results: each replicate, their mean and spread.

The run's own metrics describe the ensemble (the reconstruction is the replicates' mean); this adds
each replicate's metrics as the method alone would report them, their mean and sample standard
deviation (what a seed sweep would give), and the across-replicate variance as an uncertainty map
of its own.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import torch
from torch import Tensor

from dip_lightning.methods.base import DeepImagePrior
from dip_lightning.methods.evaluation import evaluate_prediction
from dip_lightning.metrics.uncertainty import uce
from dip_lightning.physics.observation import InverseProblem


def replicate_report(
    method: DeepImagePrior, problem: InverseProblem
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Per-replicate metrics, their mean and std, and the across-replicate variance map.

    Returns ``({}, {})`` for a method that is not replicated. Uses the predictions behind the last
    :meth:`predict_distribution` (the reported ensemble), so the numbers describe the same samples.
    """
    replicas = method.replicas
    if replicas is None:
        return {}, {}
    predictions = replicas.last_predictions or replicas.predictions(method)
    peaks = method.trajectory.replicate_peaks() or [{}] * replicas.count
    per_replicate = []
    for seed, prediction, peak in zip(replicas.seeds, predictions, peaks):
        entry: dict[str, Any] = {"seed": seed, **evaluate_prediction(prediction, problem, method.calibration)}
        entry.update(peak)
        per_replicate.append(entry)
    metrics: dict[str, Any] = {"replicates": method.replicates, "per_replicate": per_replicate}
    for name in per_replicate[0]:
        values = [float(entry[name]) for entry in per_replicate]
        if name in ("seed", "peak_step") or not all(math.isfinite(v) for v in values):
            continue
        metrics[f"{name}_replicate_mean"] = statistics.fmean(values)
        metrics[f"{name}_replicate_std"] = statistics.stdev(values)
    means = torch.cat([p.mean for p in predictions])
    spread = means.var(dim=0, unbiased=False, keepdim=True)
    metrics["mean_replicate_std_map"] = float(spread.sqrt().mean())
    if problem.ground_truth is not None:
        error = (means.mean(dim=0, keepdim=True) - problem.ground_truth).pow(2)
        metrics["uce_replicates"] = float(uce(error, spread.clamp_min(1e-10)))
    return metrics, {"variance_replicates": spread}


def replicate_summary_line(metrics: dict[str, Any]) -> str | None:
    """One line of the printed summary: PSNR per replicate and its mean ± std."""
    if "per_replicate" not in metrics or "psnr_replicate_mean" not in metrics:
        return None
    values = ", ".join(f"{entry['psnr']:.2f}" for entry in metrics["per_replicate"])
    return (
        f"  {metrics['replicates']} replicates: PSNR {metrics['psnr_replicate_mean']:.2f} ± "
        f"{metrics['psnr_replicate_std']:.2f} dB ({values}); the reconstruction is their mean"
    )
