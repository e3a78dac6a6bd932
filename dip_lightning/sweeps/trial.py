"""One job as a sweep sees it: the objective value, and a recorded failure instead of a crash.

A single run (``python launch.py ...``) lets errors through, so the command line can print them
and exit with status 2. Inside a multirun, one bad trial (a setting a search space made invalid,
a file error, a bug hit by one parameter value) must not end the sweep: the error is written to
the job's ``metrics.json`` with status ``failed`` and the trial scores the finite penalty.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dip_lightning.errors import DipError
from dip_lightning.outputs import save_json, save_text
from dip_lightning.sweeps.devices import assign_gpu, share_threads
from dip_lightning.sweeps.objective import missing_metric_error, missing_metrics, objective_from_config

log = logging.getLogger(__name__)

STATUS_FAILED = "failed"


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_number() -> int | None:
    """``hydra.job.num`` inside a multirun, None otherwise."""
    if not in_multirun():
        return None
    return int(HydraConfig.get().job.num)


def job_directory(cfg: DictConfig) -> Path:
    from dip_lightning.job.run import output_directory

    return output_directory(cfg)


def config_text(cfg: DictConfig) -> str:
    """The config as YAML, resolved when possible (a bad interpolation may be the failure)."""
    try:
        return OmegaConf.to_yaml(cfg, resolve=True)
    except Exception:
        return OmegaConf.to_yaml(cfg)


def record_failure(cfg: DictConfig, error: BaseException, seconds: float) -> Path:
    """Write (or update) the job's metrics.json with status ``failed`` and the error."""
    directory = job_directory(cfg)
    path = directory / "metrics.json"
    metrics: dict[str, Any] = {}
    if path.is_file():
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError):
            metrics = {}
    metrics.update(
        {
            "status": STATUS_FAILED,
            "reason": str(error) or type(error).__name__,
            "error_type": type(error).__name__,
            "seconds": metrics.get("seconds", round(seconds, 2)),
        }
    )
    try:
        save_json(path, metrics)
        if not (directory / "config.yaml").is_file():
            save_text(directory / "config.yaml", config_text(cfg))
    except OSError as write_error:  # a full disk must not end the sweep as well
        log.error("Could not record the failed trial in %s: %s", path, write_error)
    return path


def run_trial(cfg: DictConfig) -> float | tuple[float, ...] | None:
    """Run one job and return its objective; in a multirun, failures return the penalty.

    Also pins a multirun job to its own GPU (``gpu_assignment``) and, under the joblib launcher,
    shares the CPU threads between the trials running at once (``num_threads: null``).
    """
    from dip_lightning.job.run import run

    multirun = in_multirun()
    start = time.perf_counter()
    try:
        objective = objective_from_config(cfg)
    except DipError as error:
        if not multirun:
            raise
        print(f"error: {error}", file=sys.stderr, flush=True)
        record_failure(cfg, error, time.perf_counter() - start)
        return None  # no direction to give a penalty a sign: Optuna marks the trial failed
    if multirun:
        assign_gpu(cfg, job_number())
        share_threads(cfg, HydraConfig.get().launcher)
    try:
        value = run(cfg)
    except Exception as error:
        if not multirun:
            raise
        if isinstance(error, DipError):
            print(f"error: {error}", file=sys.stderr, flush=True)
        else:
            log.exception("Trial failed with an unexpected error; the sweep goes on.")
        record_failure(cfg, error, time.perf_counter() - start)
        return objective.penalty_value()
    metrics_path = job_directory(cfg) / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        if metrics.get("status") == "completed" and missing_metrics(objective, metrics):
            # A single run does not need the objective; a sweeper reports this as an error.
            log.warning("%s", missing_metric_error(objective, metrics))
    return value
