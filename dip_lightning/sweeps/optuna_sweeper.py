"""An Optuna sweeper whose study survives being killed: re-running the same command continues it.

The stock ``hydra-optuna-sweeper`` 1.3 runs ``n_trials`` *more* trials on every invocation, leaves
trials of a killed sweep RUNNING for ever, re-proposes the same first points when the sampler has
a fixed seed, and ends the whole sweep when one trial raises. This sweeper:

* treats ``n_trials`` as the total target: finished trials (COMPLETE, PRUNED, FAIL) already in
  the storage count, and only the rest are run;
* puts trials left RUNNING by a killed sweep back in the queue (WAITING): they are re-run with
  the same trial number, parameters and job directory, so no finished trial is lost or repeated;
* seeds the sampler with ``seed + number of trials already in the study``, so a resumed study
  does not replay the first proposals (with a fixed seed, a fresh sampler would draw the same
  random start-up points again);
* writes each trial's job into ``<sweep dir>/<trial number>`` and stores the job's status
  (completed, diverged, failed), directory, run time and error on the trial as user attributes;
* lets failed trials score the finite penalty (see :mod:`dip_lightning.sweeps.trial`), and stops
  only after ``max_consecutive_failures`` failed trials in a row (a broken setting, not a bad
  parameter value), or at once when the objective metric is missing from a finished run;
* refuses to continue a study with different fixed overrides or search space unless
  ``check_resume`` is false: trials of different configurations cannot be compared (overrides
  that only change speed or logging, :data:`RESUME_IGNORED`, may differ).

It assumes one sweeper process per study: trials that another live process is running would be
re-queued. Set ``requeue_running: false`` when several sweepers share one storage.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from dip_lightning.errors import ConfigError, DipError
from dip_lightning.sweeps.devices import parallel_jobs
from dip_lightning.sweeps.objective import (
    Objective,
    check_values,
    missing_metric_error,
    missing_metrics,
    objective_from_config,
)

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# Overrides that change how a trial runs or logs, not its result: a study may continue with others.
RESUME_IGNORED = (
    "num_threads",
    "logger",
    "wandb_group",
    "callbacks",
    "gpu_assignment",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.enable_progress_bar",
)
SIGNATURE_ATTR = "dip_lightning_signature"


class SweepError(DipError, CompactHydraException):
    """The sweep cannot usefully go on (a bad setting, every trial fails, the study does not match).

    Hydra prints a CompactHydraException as its message alone, without a traceback.
    """


def sqlite_path(storage: str | None) -> Path | None:
    """The database file of a ``sqlite:///`` storage URL, else None."""
    if isinstance(storage, str) and storage.startswith("sqlite:///"):
        return Path(storage[len("sqlite:///") :])
    return None


def prepare_storage(storage: Any) -> Any:
    """Create the folder of a SQLite storage (SQLite creates the file, not its folder)."""
    path = sqlite_path(storage)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    return storage


def requeue_running(storage_url: Any, study_name: str | None) -> list[int]:
    """Put the RUNNING trials of an existing study back to WAITING; returns their numbers.

    A trial is RUNNING in the storage only while a sweeper works on it, so at the start of a
    sweep (one sweeper per study) a RUNNING trial was left by a sweep that was killed.
    """
    if storage_url is None or study_name is None:
        return []
    storage = optuna.storages.get_storage(storage_url)
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return []
    numbers = []
    for trial in storage.get_all_trials(study_id, deepcopy=False):
        if trial.state != TrialState.RUNNING:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        if storage.set_trial_state(trial_id, TrialState.WAITING):
            numbers.append(trial.number)
    return numbers


def read_metrics(job_dir: Path | None) -> dict[str, Any]:
    if job_dir is None or not (job_dir / "metrics.json").is_file():
        return {}
    try:
        return json.loads((job_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}


class ResumableOptunaSweeper(OptunaSweeperImpl):
    """The stock Optuna sweeper's search-space handling with a resumable, failure-tolerant loop.

    The sampler arrives as its config (the sweeper config sets ``_recursive_: false``) so that it
    can be built with a seed that depends on the trials already in the study.
    """

    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: Any | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int | None,
        max_failure_rate: float,
        search_space: DictConfig | None,
        custom_search_space: str | None,
        params: DictConfig | None,
        requeue_running: bool = True,
        check_resume: bool = True,
        max_consecutive_failures: int | None = 3,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            sampler,
            direction,
            storage,
            study_name,
            int(n_trials),
            int(n_jobs or 1),
            float(max_failure_rate),
            search_space,
            custom_search_space,
            params,
        )
        self.sampler_config = sampler
        self.n_jobs_setting = n_jobs
        self.requeue_running = bool(requeue_running)
        self.check_resume = bool(check_resume)
        self.max_consecutive_failures = max_consecutive_failures
        self.seed = seed
        self.override_order: list[str] = []
        if int(n_trials) < 1:
            raise ConfigError("hydra.sweeper.n_trials", n_trials, "must be >= 1 (the total number of trials)")

    # ------------------------------------------------------------------ set-up helpers
    def batch_size(self) -> int:
        """Trials asked for at once: ``n_jobs``, or (null) as many as the launcher runs at once."""
        if self.n_jobs_setting:
            return max(1, int(self.n_jobs_setting))
        return parallel_jobs(self.config.hydra.get("launcher"))

    def make_sampler(self, seed_offset: int) -> Any:
        """Build the sampler with seed ``seed + seed_offset`` (the trials already in the study).

        The seed is ``hydra.sweeper.seed``, or the sampler's own ``seed`` when that is null;
        samplers without a seed (grid) are built as configured.
        """
        config = self.sampler_config
        if not isinstance(config, DictConfig | dict):
            log.warning("Sampler given as an object: its seed cannot follow the study (resumes may repeat).")
            return config
        node = OmegaConf.to_container(OmegaConf.create(config), resolve=True)
        base = self.seed if self.seed is not None else node.get("seed")
        if "seed" in node and base is not None:
            node["seed"] = int(base) + int(seed_offset)
        return instantiate(node)

    def distributions_and_fixed(
        self, arguments: list[str]
    ) -> tuple[dict[str, BaseDistribution], dict[str, Any]]:
        """Distributions to sample and fixed overrides, from ``hydra.sweeper.params`` and the command line."""
        self._process_searchspace_config()
        params_conf = self._parse_sweeper_params_config()
        params_conf.extend(arguments)
        distributions, fixed = create_params_from_overrides(params_conf)
        parsed = OverridesParser.create().parse_overrides(params_conf)
        self.override_order = [override.get_key_element() for override in parsed]
        if self.search_space_distributions:
            distributions = {**self.search_space_distributions, **distributions}
        for name in fixed:
            distributions.pop(name, None)
        return distributions, fixed

    def ordered_overrides(
        self, trials: list[Any], distributions: dict[str, Any], fixed: dict[str, Any]
    ) -> list[tuple[str, ...]]:
        """Each trial's overrides in the order the user wrote them (sweeper params, then the command line).

        The stock sweeper puts sampled values first; ``a={x:1} a.x=choice(1,2)`` needs the order kept.
        """
        order = {name: index for index, name in enumerate(self.override_order)}
        result = []
        for overrides in self._configure_trials(trials, distributions, fixed):
            result.append(
                tuple(sorted(overrides, key=lambda item: order.get(item.split("=", 1)[0], len(order))))
            )
        return result

    def signature(
        self, objective: Objective, distributions: dict[str, BaseDistribution], fixed: dict[str, Any]
    ) -> dict[str, Any]:
        """What must not change between the runs of one study."""

        def matters(key: str) -> bool:
            name = key.lstrip("+~")
            return not any(name == p or name.startswith(p + ".") for p in RESUME_IGNORED)

        return {
            "fixed_overrides": sorted(f"{k}={v}" for k, v in fixed.items() if matters(k)),
            "search_space": {k: repr(v) for k, v in sorted(distributions.items())},
            "objective": list(objective.names),
        }

    def check_study(self, study: optuna.Study, directions: list[str], signature: dict[str, Any]) -> None:
        """Refuse to continue a study whose directions or configuration differ from this command's."""
        stored = [d.name.lower() for d in study.directions]
        if stored != directions:
            raise SweepError(
                f"error: the study '{study.study_name}' in {self.storage} optimises {stored}, but this "
                f"command asks for {directions}: choose another hydra.sweeper.study_name."
            )
        previous = study.user_attrs.get(SIGNATURE_ATTR)
        if previous is None:
            study.set_user_attr(SIGNATURE_ATTR, signature)
            return
        if self.check_resume and previous != signature:
            changes = [
                f"{key}: {previous.get(key)} -> {signature[key]}"
                for key in signature
                if previous.get(key) != signature[key]
            ]
            raise SweepError(
                f"error: the study '{study.study_name}' in {self.storage} was started with other settings "
                f"({'; '.join(changes)}). Its trials would not be comparable: use the same command "
                "to continue it, another hydra.sweeper.study_name for a new study, or "
                "hydra.sweeper.check_resume=false to continue anyway."
            )

    # ------------------------------------------------------------------ the loop
    def sweep(self, arguments: list[str]) -> None:
        """Run the trials still missing from the study; settings errors end it with one message."""
        try:
            self.run_study(arguments)
        except SweepError:
            raise
        except DipError as error:
            raise SweepError(f"error: {error}") from None

    def run_study(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None
        objective = objective_from_config(self.config)
        directions = [d.lower() for d in self._get_directions()]
        if directions != list(objective.directions):
            raise ConfigError(
                "hydra.sweeper.direction",
                directions,
                f"must match optimization_direction={list(objective.directions)} (leave it at "
                "${optimization_direction})",
            )
        distributions, fixed = self.distributions_and_fixed(list(arguments))
        prepare_storage(self.storage)
        requeued = requeue_running(self.storage, self.study_name) if self.requeue_running else []
        study = optuna.create_study(
            study_name=self.study_name, storage=self.storage, directions=directions, load_if_exists=True
        )
        self.check_study(study, directions, self.signature(objective, distributions, fixed))
        existing = study.get_trials(deepcopy=False)
        finished = sum(t.state in FINISHED for t in existing)
        target = self.n_trials
        study.sampler = self.make_sampler(seed_offset=len(existing))
        if isinstance(study.sampler, functools.partial) and study.sampler.func is optuna.samplers.GridSampler:
            grid = {name: self._to_grid_sampler_choices(d) for name, d in distributions.items()}
            study.sampler = study.sampler(grid)
            target = min(target, math.prod(len(v) for v in grid.values()))
        remaining = max(0, target - finished)
        log.info("Study: %s (storage %s)", study.study_name, self.storage)
        log.info("Objective: %s, directions %s", list(objective.names), directions)
        log.info(
            "Trials: %d finished of %d, %d to run now%s",
            finished,
            target,
            remaining,
            f" (re-running interrupted trials {requeued})" if requeued else "",
        )
        self.job_idx = len(existing) - len(requeued)
        consecutive_failures = 0
        while remaining > 0:
            trials = [study.ask() for _ in range(min(remaining, self.batch_size()))]
            overrides = [
                (*override, f"hydra.sweep.subdir={trial.number}")
                for override, trial in zip(self.ordered_overrides(trials, distributions, fixed), trials)
            ]
            returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            fatal: ConfigError | None = None
            for trial, job in zip(trials, returns):
                outcome = trial_outcome(job, objective)
                for key, value in outcome.attrs.items():
                    trial.set_user_attr(key, value)
                tell(study, trial, outcome)
                if isinstance(outcome.error, ConfigError):
                    fatal = fatal or outcome.error
                if outcome.failed:
                    consecutive_failures += 1
                    log.warning("Trial %d failed: %s", trial.number, outcome.error)
                else:
                    consecutive_failures = 0
                    log.info("Trial %d %s: %s", trial.number, outcome.status, outcome.values)
            remaining -= len(returns)
            if fatal is not None:
                raise fatal
            limit = self.max_consecutive_failures
            if limit and consecutive_failures >= int(limit):
                raise SweepError(
                    f"error: {consecutive_failures} trials in a row failed (last error: {outcome.error}). The "
                    "sweep stops here; fix the cause and re-run the same command to continue the study "
                    "(hydra.sweeper.max_consecutive_failures=null disables this check)."
                )
        self.write_results(study, objective)

    def write_results(self, study: optuna.Study, objective: Objective) -> None:
        """optimization_results.yaml in the sweep directory: best trial(s) among completed ones."""
        trials = study.get_trials(deepcopy=False)
        ok = [
            t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("status") == "completed"
        ]
        counts: dict[str, int] = {}
        for t in trials:
            key = str(t.user_attrs.get("status") or t.state.name.lower())
            counts[key] = counts.get(key, 0) + 1
        results: dict[str, Any] = {
            "name": "optuna",
            "study_name": study.study_name,
            "storage": str(self.storage),
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
        OmegaConf.save(
            OmegaConf.create(results), Path(self.config.hydra.sweep.dir) / "optimization_results.yaml"
        )


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
