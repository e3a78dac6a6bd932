"""Turning a fitted (or stopped, or diverged) method into the files and numbers of a run."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from dip_lightning.job.replicate_results import replicate_report, replicate_summary_line
from dip_lightning.methods.base import DeepImagePrior
from dip_lightning.methods.evaluation import (
    DEFAULT_CALIBRATION,
    Calibration,
    aligned_prediction,
    calibration_curves,
    evaluate_prediction,
)
from dip_lightning.methods.prediction import Prediction
from dip_lightning.metrics.image import psnr, ssim
from dip_lightning.outputs import save_image, save_json, save_map, save_measurement, save_text
from dip_lightning.physics.observation import InverseProblem
from dip_lightning.stopping.callback import StoppingCallback
from dip_lightning.tracking.image_logger import wandb_loggers
from dip_lightning.viz.plots import calibration_diagram, save_figure

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a job reports: its status, scalar metrics and the files it wrote."""

    status: str
    metrics: dict[str, Any]
    output_dir: Path
    files: list[Path] = field(default_factory=list)


# How the source of a reconstruction names what the stopping callback reported for its detection.
REPORTED_SUFFIX = {"ema": " (output EMA)", "ema_centred": " (output EMA centred on it)"}
REPORTED_WORDS = {"ema_centred": "output EMA centred on", "ema": "output EMA at"}


def choose_prediction(
    method: DeepImagePrior, stopping: StoppingCallback, status: str
) -> tuple[Prediction, str]:
    """The prediction the run reports, and where it came from.

    A diverged network cannot be sampled: the last finite image it made is reported (see
    :func:`last_finite_image`). A stopping criterion's detected image replaces the mean (its
    uncertainty maps are those at the end of the run).
    """
    if status == "diverged":
        mean, source = last_finite_image(method, stopping)
        zeros = torch.zeros_like(mean)
        return Prediction(mean, zeros, zeros.clone()), source
    prediction = method.predict_distribution()
    detected, kind = stopping.reported_image()
    if stopping.reports_detection and detected is not None:
        prediction = dataclasses.replace(prediction, mean=detected.to(prediction.mean))
        return prediction, f"stopping:{stopping.criterion.name}{REPORTED_SUFFIX.get(kind, '')}"
    return prediction, method.reconstruction


def last_finite_image(method: DeepImagePrior, stopping: StoppingCallback) -> tuple[torch.Tensor, str]:
    """The best image a diverged run still has: the output EMA, else the output of peak PSNR,
    else the stopping criterion's detection.

    With ``method.divergence_check_every`` > 1 non-finite outputs can reach the EMA before the
    divergence is seen, so each candidate is checked.
    """
    trajectory = method.trajectory
    candidates = []
    if trajectory.ema.steps > 0:
        candidates.append((trajectory.ema.value, "ema_before_divergence"))
    if int(trajectory.peak_step) >= 0:
        candidates.append((trajectory.best_image, "peak_before_divergence"))
    detected = stopping.criterion.detected_image
    if detected is not None:
        candidates.append((detected.to(trajectory.best_image), "detected_before_divergence"))
    for image, source in candidates:
        if bool(torch.isfinite(image).all()):
            return image, source
    return torch.zeros_like(trajectory.best_image), "none_finite"


def detection_metrics(
    stopping: StoppingCallback, problem: InverseProblem, peak: dict[str, Any]
) -> dict[str, float]:
    """Quality of the raw output at the criterion's detected step, and how far below the peak it is.

    The method's peak tracks the raw output (not the EMA) under the same step numbers, so
    ``detection_gap = peak_psnr - detected_psnr`` is >= 0 and 0 for the oracle. For a rule that
    reports no detection (``fixed``) the detected output is the last one, so the gap is what
    running to the end costs.
    """
    image = stopping.criterion.detected_image
    truth = problem.ground_truth
    if image is None or truth is None:
        return {}
    image = problem.aligned(image)
    metrics = {
        "detected_psnr": float(psnr(image, truth).mean()),
        "detected_ssim": float(ssim(image, truth).mean()),
    }
    if "peak_psnr" in peak:
        metrics["detection_gap"] = peak["peak_psnr"] - metrics["detected_psnr"]
    ema = stopping.detected_ema
    if ema is not None:
        metrics["detected_ema_psnr"] = float(psnr(problem.aligned(ema), truth).mean())
    return metrics


def data_consistent_prediction(
    prediction: Prediction, problem: InverseProblem
) -> tuple[Prediction, dict[str, float]]:
    """The prediction with its mean made consistent with the measurement (``data_consistency``).

    ``operator.data_consistent`` puts back what was measured (the sampled k-space lines for MRI,
    as ConvDecoder does after fitting); the quality of the mean before that step is kept as
    ``psnr_before_data_consistency`` and ``ssim_before_data_consistency``. Uncertainty maps are
    those of the network's own samples.
    """
    before: dict[str, float] = {}
    truth = problem.ground_truth
    if truth is not None:
        before = {
            "psnr_before_data_consistency": float(psnr(prediction.mean, truth).mean()),
            "ssim_before_data_consistency": float(ssim(prediction.mean, truth).mean()),
        }
    mean = problem.operator.data_consistent(prediction.mean, problem.observation).to(prediction.mean)
    return dataclasses.replace(prediction, mean=mean), before


def baseline_metrics(problem: InverseProblem) -> tuple[torch.Tensor, dict[str, float]]:
    """The classical reconstruction (``pseudo_inverse``: noisy image, bicubic, FBP, HIO) and its
    quality; with a ground truth, aligned to it (the operator's ``alignment``)."""
    baseline = problem.operator.pseudo_inverse(problem.observation).detach()
    if problem.ground_truth is None:
        return baseline, {}
    baseline = problem.aligned(baseline)
    clipped = baseline.clamp(0, 1)
    extra = problem.operator.image_metrics(clipped, problem.ground_truth)
    return baseline, {
        "baseline_psnr": float(psnr(clipped, problem.ground_truth).mean()),
        "baseline_ssim": float(ssim(clipped, problem.ground_truth).mean()),
        **{f"baseline_{name}": value for name, value in extra.items()},
    }


def intensity_transform_record(problem: InverseProblem) -> dict[str, Any]:
    """The raw -> [0, 1] map of the input image, so results can be read in the original units."""
    return {
        **problem.intensity_transform,
        "inverse": "raw = unit * scale + offset",
        "applies_to": ["reconstruction.npy", "baseline.npy", "ground_truth.npy"],
    }


def save_uncertainty(
    output_dir: Path,
    prediction: Prediction,
    problem: InverseProblem,
    method_calibration: Calibration = DEFAULT_CALIBRATION,
) -> list[Path]:
    """Variance maps, the error map and calibration diagrams, for methods with uncertainty."""
    files: list[Path] = []
    if not prediction.has_uncertainty:
        return files
    for name in ("epistemic", "aleatoric"):
        files += save_map(output_dir, f"variance_{name}", getattr(prediction, name))
    files += save_map(output_dir, "variance_total", prediction.total)
    if problem.ground_truth is not None:
        files += save_map(output_dir, "error_squared", (prediction.mean - problem.ground_truth).pow(2))
    for name, curve in calibration_curves(prediction, problem, method_calibration).items():
        files.append(
            save_figure(
                calibration_diagram(curve, title=f"calibration vs {name}"),
                output_dir / f"calibration_{name}.png",
            )
        )
    return files


def log_final(trainer: pl.Trainer, metrics: dict[str, Any], output_dir: Path, files: list[Path]) -> None:
    """Final scalars to every logger; the maps and diagrams to W&B as images."""
    scalars = {
        f"final/{k}": v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    for logger in trainer.loggers:
        try:
            logger.log_metrics(scalars, step=trainer.global_step)
            logger.save()
        except Exception as error:
            log.warning("Could not log final metrics to %s: %s", type(logger).__name__, error)
    import numpy as np
    from PIL import Image

    pngs = [f for f in files if f.suffix == ".png"]
    for logger in wandb_loggers(trainer):
        for png in pngs:
            try:
                logger.log_image(
                    key=f"final/{png.stem}", images=[np.asarray(Image.open(png))], step=trainer.global_step
                )
            except Exception as error:
                log.warning("Could not log %s to W&B: %s", png.name, error)


def finalise(
    method: DeepImagePrior,
    problem: InverseProblem,
    stopping: StoppingCallback,
    trainer: pl.Trainer,
    output_dir: Path,
    cfg: DictConfig,
    *,
    status: str,
    reason: str,
    seconds: float,
    extra_metrics: dict[str, Any] | None = None,
) -> RunResult:
    """Evaluate, write every output file, log the final numbers and print the summary.

    ``extra_metrics`` (e.g. where the checkpoint is) go into metrics.json as they are.
    """
    problem = problem.to(method.device)
    prediction, source = choose_prediction(method, stopping, status)
    before_consistency: dict[str, float] = {}
    if cfg.get("data_consistency", False) and status != "diverged":
        prediction, before_consistency = data_consistent_prediction(prediction, problem)
        source += " + data consistency"
    metrics: dict[str, Any] = {
        "status": status,
        "steps": int(trainer.global_step),
        "seconds": round(seconds, 2),
    }
    if reason:
        metrics["reason"] = reason
    metrics["reconstruction_source"] = source
    # Scored and saved aligned to the truth (the identity but for operators with ambiguities).
    prediction = aligned_prediction(prediction, problem)
    metrics.update(evaluate_prediction(prediction, problem, method.calibration))
    metrics.update(before_consistency)
    replicate_metrics, replicate_maps = replicate_report(method, problem)
    metrics.update(replicate_metrics)
    peak = method.trajectory.peak_summary()
    metrics.update(peak)
    metrics.update(method.result_metrics())
    if "peak_psnr" in metrics and "psnr" in metrics:
        metrics["peak_gap"] = metrics["peak_psnr"] - metrics["psnr"]
    metrics.update(stopping.summary())
    metrics.update(detection_metrics(stopping, problem, peak))
    baseline, base_metrics = baseline_metrics(problem)
    metrics.update(base_metrics)
    metrics.update(extra_metrics or {})

    prediction = prediction.detach_cpu()
    files = save_image(output_dir, "reconstruction", prediction.mean)
    measured_in_image_space = problem.operator.measurement_in_image_space
    files += save_measurement(output_dir, "observation", problem.observation, problem.operator)
    if not measured_in_image_space or base_metrics:
        files += save_image(output_dir, "baseline", baseline.clamp(0, 1).cpu())
    if problem.ground_truth is not None:
        files += save_image(output_dir, "ground_truth", problem.ground_truth.cpu())
    files += save_uncertainty(output_dir, prediction, problem.to("cpu"), method.calibration)
    for name, values in replicate_maps.items():
        files += save_map(output_dir, name, values)
    files.append(save_json(output_dir / "curves.json", method.trajectory.psnr_curves()))
    files.append(save_json(output_dir / "metrics.json", metrics))
    if problem.intensity_transform is not None:
        files.append(save_json(output_dir / "transform.json", intensity_transform_record(problem)))
    files.append(save_text(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True)))
    log_final(trainer, metrics, output_dir, files)
    result = RunResult(status=status, metrics=metrics, output_dir=output_dir, files=files)
    print_summary(result, problem)
    print("\n".join(where_to_look(result, trainer)), flush=True)
    return result


def print_summary(result: RunResult, problem: InverseProblem) -> None:
    """A short, plain summary on stdout: quality, uncertainty, where the files are."""
    m = result.metrics
    lines = [
        f"[dip-lightning] {problem.name}: {result.status} after {m['steps']} steps in {m['seconds']:.1f} s"
    ]
    if "psnr" in m:
        lines.append(
            f"  reconstruction PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f} ({m['reconstruction_source']})"
        )
    if "psnr_aligned" in m:  # an operator's ambiguity-aware metrics (ForwardOperator.image_metrics)
        lines.append(
            f"  after the best shift ({m['shift_rows']}, {m['shift_cols']}) px: PSNR {m['psnr_aligned']:.2f} dB, "
            f"SSIM {m['ssim_aligned']:.4f}"
            + (f"; kernel PSNR {m['kernel_psnr']:.2f} dB" if "kernel_psnr" in m else "")
        )
    replicates = replicate_summary_line(m)
    if replicates:
        lines.append(replicates)
    if "baseline_psnr" in m:
        lines.append(
            f"  baseline ({problem.operator.baseline_name}) PSNR {m['baseline_psnr']:.2f} dB, "
            f"SSIM {m['baseline_ssim']:.4f}"
        )
    if "peak_psnr" in m:
        lines.append(
            f"  peak PSNR {m['peak_psnr']:.2f} dB at step {m['peak_step']}, EMA peak {m['peak_psnr_ema']:.2f} dB"
        )
    lines += stopping_lines(m)
    if "uce" in m:
        lines.append(f"  UCE {m['uce']:.5f} (vs truth), NLL {m['nll']:.3f}")
    if "reason" in m:
        lines.append(f"  {m['reason']}")
    lines.append(f"  outputs: {result.output_dir}")
    print("\n".join(lines), flush=True)


def stopping_lines(m: dict[str, Any]) -> list[str]:
    """The summary lines of an early-stopping run: which step is reported, where and why it stopped.

    None for a rule whose detection is not the reconstruction (``reports_detection`` false).
    """
    if not m.get("reports_detection") or m.get("detected_step") is None:
        return []
    source = str(m.get("reconstruction_source"))
    what = next(
        (words for kind, words in REPORTED_WORDS.items() if REPORTED_SUFFIX[kind] in source), "raw output at"
    )
    line = f"  {m['criterion']}: reconstruction = {what} step {m['detected_step']}"
    if "detection_gap" in m:
        line += f" (raw output there {m['detected_psnr']:.2f} dB, {m['detection_gap']:.2f} dB below its peak)"
    lines = [line]
    if m.get("stopped_early"):
        lines.append(f"  stopped at step {m['stop_step']}: {m['stop_reason']}")
    else:
        lines.append(f"  did not stop early: {m.get('stop_reason', 'ran to trainer.max_steps')}")
    return lines


def where_to_look(result: RunResult, trainer: pl.Trainer) -> list[str]:
    """Closing lines: which image files to open and how to see the W&B run."""
    pngs = [f.name for f in result.files if f.suffix == ".png"]
    lines = [f"  images: {', '.join(pngs)}"] if pngs else []
    for logger in wandb_loggers(trainer):
        try:
            run = logger.experiment
            run_dir = Path(run.dir).parent
            offline = bool(getattr(run.settings, "_offline", False)) or run.settings.mode == "offline"
            url = None if offline else run.url
        except Exception:  # a broken W&B run must not spoil the summary
            continue
        if url:
            lines.append(f"  W&B run: {url}")
        else:
            lines.append(f"  W&B (offline): {run_dir}; to see it online: wandb sync {run_dir}")
    return lines
