"""What a finished job tells the study, and the sweep's results file.

A job that raised, returned None, NaN or the wrong number of values is FAIL in Optuna; a diverged
or failed run that returned the finite penalty is COMPLETE with that value (the sampler learns to
avoid it) and is marked by the ``status`` user attribute. Keeping this apart from the sweeper's
loop lets it be tested on fake jobs, without launching anything.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.trial import TrialState

from dip_lightning.sweeps.objective import Objective, check_values, missing_metric_error, missing_metrics

log = logging.getLogger(__name__)


def read_metrics(job_dir: Path | None) -> dict[str, Any]:
    if job_dir is None or not (job_dir / "metrics.json").is_file():
        return {}
    try:
        return json.loads((job_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}


def tell(study: optuna.Study, trial: optuna.trial.Trial, outcome: TrialOutcome) -> None:
    """``study.tell``, ignoring the grid sampler's call to ``Study.stop`` once the grid is done."""
    try:
        study.tell(trial, values=outcome.values, state=outcome.state)
    except RuntimeError as error:
        if "Study.stop" not in str(error):
            raise


@dataclass
class TrialOutcome:
    """What to tell Optuna about a finished job, and what to record on the trial."""

    state: TrialState
    values: list[float] | None
    status: str
    error: Any
    attrs: dict[str, Any]

    @property
    def failed(self) -> bool:
        return self.state == TrialState.FAIL or self.status == "failed"


def trial_outcome(job: JobReturn, objective: Objective) -> TrialOutcome:
    """Read a finished job's return value and metrics.json.

    A job that raised (an exception launch.py did not catch), returned None, NaN or the wrong
    number of values is FAIL in Optuna; a diverged or failed run that returned the penalty is
    COMPLETE with that value (the sampler learns to avoid it) and marked by its ``status``. A
    completed run without the objective metric is FAIL with a ConfigError that stops the sweep.
    """
    job_dir = Path(job.hydra_cfg.hydra.runtime.output_dir) if job.hydra_cfg is not None else None
    metrics = read_metrics(job_dir)
    status = str(metrics.get("status") or "missing")
    error: Any = metrics.get("reason")
    state, values = TrialState.COMPLETE, None
    if job.status != JobStatus.COMPLETED:
        state, status, error = TrialState.FAIL, "failed", job._return_value
    else:
        raw = job._return_value
        values = list(raw) if isinstance(raw, Sequence) and not isinstance(raw, str) else [raw]
        if raw is None or len(values) != len(objective.names) or not check_values(values):
            state, values = TrialState.FAIL, None
            error = error or f"objective value {raw!r} cannot be ranked"
            status = "failed" if status in ("completed", "missing") else status
        else:
            values = [float(v) for v in values]
    if status == "completed" and missing_metrics(objective, metrics):
        state, values = TrialState.FAIL, None
        error = missing_metric_error(objective, metrics)
    attrs: dict[str, Any] = {
        "status": status,
        "job_dir": str(job_dir) if job_dir is not None else None,
        "seconds": metrics.get("seconds"),
    }
    if (error is not None and status != "completed") or state == TrialState.FAIL:
        attrs["reason"] = str(error)[:500]
    return TrialOutcome(state=state, values=values, status=status, error=error, attrs=attrs)


def write_results(
    study: optuna.Study, objective: Objective, storage: str, path: Path, counted: Sequence[Any] | None = None
) -> dict[str, Any]:
    """optimization_results.yaml: the best trial (or Pareto front) among completed ones, counts by status.

    ``counted`` are the trials that make up the study's total (without stale trials that were
    re-queued and surplus trials of concurrent workers); all trials when None.
    """
    trials = list(counted) if counted is not None else study.get_trials(deepcopy=False)
    ok = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("status") == "completed"]
    counts: dict[str, int] = {}
    for t in trials:
        key = str(t.user_attrs.get("status") or t.state.name.lower())
        counts[key] = counts.get(key, 0) + 1
    results: dict[str, Any] = {
        "name": "optuna",
        "optuna_version": optuna.__version__,
        "study_name": study.study_name,
        "storage": storage,
        "objective": list(objective.names),
        "directions": list(objective.directions),
        "n_trials": len(trials),
        "trials_by_status": counts,
    }
    if not ok:
        log.warning("No trial completed: no best parameters to report.")
    elif not objective.is_multi:
        sign = 1.0 if objective.directions[0] == "maximize" else -1.0
        best = max(ok, key=lambda t: sign * t.value)
        results.update(
            best_trial=best.number,
            best_params=best.params,
            best_value=best.value,
            best_job_dir=best.user_attrs.get("job_dir"),
        )
        log.info(
            "Best trial %d: %s = %s, params %s", best.number, objective.names[0], best.value, best.params
        )
    else:
        ok_numbers = {t.number for t in ok}
        pareto = [t for t in study.best_trials if t.number in ok_numbers]
        results["solutions"] = [
            {
                "trial": t.number,
                "params": t.params,
                "values": t.values,
                "job_dir": t.user_attrs.get("job_dir"),
            }
            for t in pareto
        ]
        log.info("Pareto front: %d trials", len(pareto))
        for t in pareto:
            log.info("    trial %d values %s params %s", t.number, t.values, t.params)
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(results), path)
    return results
