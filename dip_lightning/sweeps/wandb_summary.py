"""W&B for sweeps that Optuna, not a W&B sweep, drives.

* Every trial run declares the objective a summary metric (``define_metric``, ``max`` or ``min``
  as the direction says), so the project's run table sorts trials by it.
* Each study gets one summary run in the same group as its trials: a table of every trial
  (parameters, status, objective values, metrics) and the sweep report's plots, so the W&B
  project page shows the sweep at a glance. Its id is derived from the study, so the workers of
  a shared study (and a resumed sweep) update one run instead of adding more.

W&B trouble is logged and never ends a trial or a sweep.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

TABLE_METRICS = ("psnr", "ssim", "uce", "nll", "heldout_mse", "peak_psnr", "steps", "seconds")


def define_objective(
    run: Any, names: list[str] | tuple[str, ...], directions: list[str] | tuple[str, ...]
) -> None:
    """Declare each objective metric (logged as ``final/<name>``) a summary max or min on a trial run."""
    for name, direction in zip(names, directions):
        try:
            run.define_metric(f"final/{name}", summary="max" if direction == "maximize" else "min")
        except Exception as error:
            log.warning("Could not define the W&B objective metric %s: %s", name, error)


def summary_run_id(study_name: str, storage: str) -> str:
    """The same id for every worker and every resume of one study."""
    digest = hashlib.sha1(f"{storage}\n{study_name}".encode()).hexdigest()[:12]
    return f"sweep-{digest}"


def trial_rows(trials: list[Any], names: list[str], read_metrics: Any) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the trials table: number, state, status, parameters, values, metrics."""
    params = sorted({p for t in trials for p in t.params})
    columns = [
        "trial",
        "state",
        "status",
        *params,
        *[f"objective/{n}" for n in names],
        *TABLE_METRICS,
        "job_dir",
    ]
    rows = []
    for t in trials:
        job_dir = t.user_attrs.get("job_dir")
        metrics = read_metrics(Path(job_dir)) if job_dir else {}
        values = list(t.values) if t.values else [None] * len(names)
        rows.append(
            [
                t.number,
                t.state.name,
                t.user_attrs.get("status", t.state.name.lower()),
                *[t.params.get(p) for p in params],
                *values,
                *[metrics.get(m) for m in TABLE_METRICS],
                job_dir,
            ]
        )
    return columns, rows


def wandb_settings(config: DictConfig) -> dict[str, Any] | None:
    """The trials' W&B logger settings, or None when the sweep does not log to W&B."""
    logger = config.get("logger") or {}
    node = logger.get("wandb") if hasattr(logger, "get") else None
    if node is None:
        return None
    settings: dict[str, Any] = {}
    for key in ("project", "entity", "offline", "tags"):
        # The trial-only keys (name: ${run_name}) resolve only inside a job, not in the sweeper.
        try:
            value = node.get(key)
            settings[key] = (
                OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            )
        except Exception:
            settings[key] = None
    return settings


def log_summary_run(
    config: DictConfig, study: Any, trials: list[Any], objective: Any, storage: str
) -> Path | None:
    """Write the study's summary run (offline or online as the trials' logger); returns its directory."""
    settings = wandb_settings(config)
    if settings is None:
        return None
    from dip_lightning.sweeps.outcome import read_metrics
    from dip_lightning.sweeps.report import build_report
    from dip_lightning.tracking.wandb_setup import prepare_wandb_kwargs

    sweep_dir = Path(config.hydra.sweep.dir)
    group = str(config.get("wandb_group") or sweep_dir.name)
    kwargs = prepare_wandb_kwargs(settings)
    try:
        import wandb

        report = build_report(sweep_dir)
        columns, rows = trial_rows(trials, list(objective.names), read_metrics)
        run = wandb.init(
            project=kwargs.get("project"),
            entity=kwargs.get("entity"),
            group=group,
            name=f"{study.study_name} (summary)",
            id=summary_run_id(study.study_name, storage),
            resume="allow",
            job_type="sweep-summary",
            tags=["sweep-summary", *(kwargs.get("tags") or [])],
            dir=str(sweep_dir),
            mode="offline" if kwargs.get("offline") else "online",
            config={
                "study_name": study.study_name,
                "storage": storage,
                "objective": list(objective.names),
                "directions": list(objective.directions),
                "n_trials": len(trials),
            },
            reinit="create_new",
        )
        payload: dict[str, Any] = {"trials": wandb.Table(columns=columns, data=rows)}
        for image in report.files:
            if image.suffix == ".png":
                payload[f"report/{image.stem}"] = wandb.Image(str(image))
        run.log(payload)
        done = [t for t in trials if t.state.name == "COMPLETE" and t.user_attrs.get("status") == "completed"]
        run.summary["trials_total"] = len(trials)
        run.summary["trials_completed"] = len(done)
        if done and not objective.is_multi:
            sign = 1.0 if objective.directions[0] == "maximize" else -1.0
            best = max(done, key=lambda t: sign * t.value)
            run.summary[f"best/{objective.names[0]}"] = best.value
            run.summary["best/trial"] = best.number
            for key, value in best.params.items():
                run.summary[f"best/{key}"] = value
        run_dir = Path(run.dir).parent
        run.finish()
        log.info("W&B summary run of the study: %s (group %s)", run_dir, group)
        return run_dir
    except Exception as error:
        log.warning("Could not write the W&B summary run of the study: %s", error)
        return None
