"""Our Optuna sweeper for Hydra: resumable studies, shared by many workers, on current Optuna.

hydra-optuna-sweeper 1.3 pins optuna 2.10; this sweeper keeps its config keys (``sampler``,
``direction``, ``storage``, ``study_name``, ``n_trials``, ``n_jobs``, ``params`` in Hydra's override
grammar, see :mod:`dip_lightning.sweeps.search_space`) and adds what our sweeps need:

* ``n_trials`` is the study's total: finished trials already in the storage count, only the
  rest are run, so re-running the same command continues a killed sweep;
* one worker (the default, ``requeue_running: true``): trials left RUNNING by a killed sweep are
  put back in the queue and re-run with the same number, parameters and directory;
* many workers on one database (``heartbeat_interval`` set): each worker records a heartbeat for
  its trials; a trial whose worker died is failed after ``grace_period`` and re-queued once as a
  new trial; workers claim trials until the study holds ``n_trials`` of them and leave when all
  have finished, so none is run twice and none is lost;
* the sampler is seeded with ``seed + trials already in the study`` (a fixed seed would replay
  the first proposals on resume); ``enqueue`` lists points to evaluate first in a new study;
* failed trials score a finite penalty and the sweep stops only after ``max_consecutive_failures``
  in a row; a study continues only with the same fixed overrides and search space
  (``check_resume``), except overrides that change speed or logging (:data:`RESUME_IGNORED`).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.errors import CompactHydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.trial import TrialState

from dip_lightning.errors import ConfigError, DipError
from dip_lightning.sweeps.devices import parallel_jobs
from dip_lightning.sweeps.objective import Objective, objective_from_config
from dip_lightning.sweeps.outcome import tell, trial_outcome, write_results
from dip_lightning.sweeps.search_space import SearchSpace, parse_search_space
from dip_lightning.sweeps.storage import (
    check_old_database,
    heartbeat_enabled,
    heartbeats,
    open_storage,
    redact,
    requeue_running,
)
from dip_lightning.sweeps.study_trials import (
    FINISHED,
    SURPLUS_ATTR,
    counted_trials,
    drop_foreign_settings,
    grid_size,
    takes_setting,
)
from dip_lightning.sweeps.wandb_summary import log_summary_run

log = logging.getLogger(__name__)

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


class ResumableOptunaSweeper(Sweeper):
    """A Hydra sweeper that asks Optuna for trials in batches and launches them as jobs.

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
        n_jobs: int | None = None,
        params: DictConfig | dict[str, Any] | None = None,
        seed: int | None = None,
        requeue_running: bool = True,
        check_resume: bool = True,
        max_consecutive_failures: int | None = 3,
        heartbeat_interval: int | None = None,
        grace_period: int | None = None,
        max_retry: int = 1,
        poll_interval: float = 5.0,
        enqueue: ListConfig | list[dict[str, Any]] | None = None,
        search_space: Any = None,
        custom_search_space: Any = None,
        max_failure_rate: float | None = None,
    ) -> None:
        for key, value in (("search_space", search_space), ("custom_search_space", custom_search_space)):
            if value is not None:
                raise ConfigError(
                    f"hydra.sweeper.{key}",
                    "set",
                    "is not supported: write the search space as hydra.sweeper.params "
                    "(interval, tag(log, ...), choice, range), e.g. prior.sigma: tag(log, interval(0.01, 0.5))",
                )
        if int(n_trials) < 1:
            raise ConfigError("hydra.sweeper.n_trials", n_trials, "must be >= 1 (the total number of trials)")
        self.sampler_config = sampler
        self.direction = direction
        self.storage_setting = storage
        self.study_name = study_name
        self.n_trials = int(n_trials)
        self.n_jobs = n_jobs
        self.params = (
            OmegaConf.to_container(params, resolve=True) if isinstance(params, DictConfig) else params
        )
        self.seed = seed
        self.requeue_running = bool(requeue_running)
        self.check_resume = bool(check_resume)
        self.max_consecutive_failures = max_consecutive_failures
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.max_retry = int(max_retry)
        self.poll_interval = float(poll_interval)
        self.enqueue = (
            OmegaConf.to_container(enqueue, resolve=True) if isinstance(enqueue, ListConfig) else enqueue
        )
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.hydra_context: HydraContext | None = None
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # ------------------------------------------------------------------ set-up helpers
    def directions(self) -> list[str]:
        raw = self.direction
        values = list(raw) if isinstance(raw, ListConfig | list | tuple) else [raw]
        return [str(getattr(v, "name", v)).lower() for v in values]

    def batch_size(self) -> int:
        """Trials asked for at once: ``n_jobs``, or (null) as many as the launcher runs at once."""
        if self.n_jobs:
            return max(1, int(self.n_jobs))
        assert self.config is not None
        return parallel_jobs(self.config.hydra.get("launcher"))

    def make_sampler(self, seed_offset: int, space: SearchSpace) -> optuna.samplers.BaseSampler:
        """Build the sampler with seed ``seed + seed_offset`` (the trials already in the study).

        The seed is ``hydra.sweeper.seed``, or the sampler's own ``seed`` when that is null. The
        grid sampler gets the grid of the search space.
        """
        node = OmegaConf.to_container(OmegaConf.create(self.sampler_config), resolve=True)
        if not isinstance(node, dict) or "_target_" not in node:
            raise ConfigError(
                "hydra.sweeper.sampler", node, "must be a config with _target_ (an Optuna sampler)"
            )
        base = self.seed if self.seed is not None else node.get("seed")
        if "seed" in node and base is not None:
            node["seed"] = int(base) + int(seed_offset)
        if takes_setting(node, "search_space"):
            node["search_space"] = space.grid()  # the grid sampler enumerates the space
        return instantiate(drop_foreign_settings(node))

    def signature(self, objective: Objective, space: SearchSpace) -> dict[str, Any]:
        """What must not change between the runs of one study."""

        def matters(key: str) -> bool:
            name = key.lstrip("+~")
            return not any(name == p or name.startswith(p + ".") for p in RESUME_IGNORED)

        return {
            "fixed_overrides": sorted(f"{k}={v}" for k, v in space.fixed.items() if matters(k)),
            "search_space": {k: repr(v) for k, v in sorted(space.distributions.items())},
            "objective": list(objective.names),
        }

    def check_study(self, study: optuna.Study, directions: list[str], signature: dict[str, Any]) -> None:
        """Refuse to continue a study whose directions or configuration differ from this command's."""
        where = redact(self.storage_setting)
        stored = [d.name.lower() for d in study.directions]
        if stored != directions:
            raise SweepError(
                f"error: the study '{study.study_name}' in {where} optimises {stored}, but this "
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
                f"error: the study '{study.study_name}' in {where} was started with other settings "
                f"({'; '.join(changes)}). Its trials would not be comparable: use the same command "
                "to continue it, another hydra.sweeper.study_name for a new study, or "
                "hydra.sweeper.check_resume=false to continue anyway."
            )

    def enqueue_points(self, study: optuna.Study, space: SearchSpace) -> None:
        """Queue ``enqueue``'s points in a new study (the paper's fixed initial design)."""
        if not self.enqueue or study.get_trials(deepcopy=False):
            return
        for point in self.enqueue:
            if not isinstance(point, dict) or not set(point) <= set(space.distributions):
                raise ConfigError(
                    "hydra.sweeper.enqueue",
                    point,
                    f"must be a list of {{parameter: value}} with parameters of the search space "
                    f"({sorted(space.distributions)})",
                )
            study.enqueue_trial(point, skip_if_exists=True)  # workers starting together
        log.info("Queued %d initial points: %s", len(self.enqueue), self.enqueue)

    # ------------------------------------------------------------------ the loop
    def sweep(self, arguments: list[str]) -> None:
        """Run the trials still missing from the study; settings errors end it with one message."""
        try:
            self.run_study(list(arguments))
        except SweepError:
            raise
        except DipError as error:
            raise SweepError(f"error: {error}") from None

    def open_study(self, objective: Objective, space: SearchSpace) -> tuple[optuna.Study, list[int]]:
        assert self.config is not None
        directions = self.directions()
        if directions != list(objective.directions):
            raise ConfigError(
                "hydra.sweeper.direction",
                directions,
                f"must match optimization_direction={list(objective.directions)} (leave it at "
                "${optimization_direction})",
            )
        sweep_dir = Path(self.config.hydra.sweep.dir)
        check_old_database(self.storage_setting, sweep_dir)
        storage = open_storage(
            self.storage_setting, self.heartbeat_interval, self.grace_period, self.max_retry
        )
        if heartbeat_enabled(storage) and self.requeue_running:
            log.info("Heartbeat on: trials of dead workers are re-queued by the heartbeat, not at start-up.")
            self.requeue_running = False
        requeued = requeue_running(storage, self.study_name) if self.requeue_running else []
        study = optuna.create_study(
            study_name=self.study_name, storage=storage, directions=directions, load_if_exists=True
        )
        self.check_study(study, directions, self.signature(objective, space))
        self.enqueue_points(study, space)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        pointer = {"study_name": study.study_name, "storage": redact(self.storage_setting)}
        OmegaConf.save(OmegaConf.create(pointer), sweep_dir / "study.yaml")
        return study, requeued

    def run_study(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None
        objective = objective_from_config(self.config)
        space = parse_search_space(self.params, arguments)
        study, requeued = self.open_study(objective, space)
        shared = heartbeat_enabled(study._storage)
        existing = study.get_trials(deepcopy=False)
        salt = os.getpid() if shared else 0  # workers started together must not draw the same points
        study.sampler = self.make_sampler(len(existing) + salt, space)
        target = self.n_trials
        if isinstance(study.sampler, optuna.samplers.GridSampler):
            target = min(target, grid_size(space))
        log.info("Study: %s (storage %s)", study.study_name, redact(self.storage_setting))
        log.info("Objective: %s, directions %s", list(objective.names), list(objective.directions))
        finished = sum(t.state in FINISHED for t in counted_trials(existing))
        log.info(
            "Trials: %d finished of %d%s",
            finished,
            target,
            f" (re-running interrupted trials {requeued})" if requeued else "",
        )
        self.job_idx = len(existing) - len(requeued)
        failures = 0
        validated = False
        while True:
            trials = self.claim(study, space, target, shared)
            if trials is None:
                break
            if not trials:
                time.sleep(self.poll_interval)
                continue
            overrides = [
                (*space.overrides(trial.params), f"hydra.sweep.subdir={trial.number}") for trial in trials
            ]
            if not validated:
                self.validate_batch_is_legal(overrides)
                validated = True
            with heartbeats(study._storage, trials):
                returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            failures = self.record(study, objective, trials, returns, failures)
        self.write_summary(study, objective)

    def claim(
        self, study: optuna.Study, space: SearchSpace, target: int, shared: bool
    ) -> list[optuna.trial.Trial] | None:
        """The next batch of trials for this worker; [] to wait for other workers; None when done.

        Queued trials (re-queued or enqueued) are taken first. A trial asked for after the total
        was reached by another worker at the same moment is marked surplus and not run.
        """
        if shared:
            optuna.storages.fail_stale_trials(study)
        live = counted_trials(study.get_trials(deepcopy=False))
        finished = sum(t.state in FINISHED for t in live)
        if finished >= target:
            return None
        free = target - len(live) + sum(t.state == TrialState.WAITING for t in live)
        if free <= 0:
            running = [t.number for t in live if t.state == TrialState.RUNNING]
            if not shared:
                log.warning("Trials %s are RUNNING in another process; this sweeper leaves them.", running)
                return None
            log.info("Waiting for trials %s of other workers.", running)
            return []
        trials = []
        for _ in range(min(free, self.batch_size())):
            trial = study.ask(space.distributions)
            ranked = [t.number for t in counted_trials(study.get_trials(deepcopy=False))]
            if trial.number not in ranked[:target]:
                trial.set_user_attr(SURPLUS_ATTR, True)
                study.tell(trial, state=TrialState.FAIL)
                log.info(
                    "Trial %d is beyond the study's %d trials (another worker took the last); not run.",
                    trial.number,
                    target,
                )
                continue
            trials.append(trial)
        return trials

    def record(
        self, study: optuna.Study, objective: Objective, trials: list[Any], returns: list[Any], failures: int
    ) -> int:
        """Tell the study each job's outcome; returns the failures in a row, raising when too many."""
        fatal: ConfigError | None = None
        outcome = None
        for trial, job in zip(trials, returns):
            outcome = trial_outcome(job, objective)
            for key, value in outcome.attrs.items():
                trial.set_user_attr(key, value)
            tell(study, trial, outcome)
            if isinstance(outcome.error, ConfigError):
                fatal = fatal or outcome.error
            if outcome.failed:
                failures += 1
                log.warning("Trial %d failed: %s", trial.number, outcome.error)
            else:
                failures = 0
                log.info("Trial %d %s: %s", trial.number, outcome.status, outcome.values)
        if fatal is not None:
            raise fatal
        limit = self.max_consecutive_failures
        if limit and failures >= int(limit):
            raise SweepError(
                f"error: {failures} trials in a row failed (last error: {outcome.error if outcome else None}). "
                "The sweep stops here; fix the cause and re-run the same command to continue the study "
                "(hydra.sweeper.max_consecutive_failures=null disables this check)."
            )
        return failures

    def write_summary(self, study: optuna.Study, objective: Objective) -> None:
        assert self.config is not None
        counted = counted_trials(study.get_trials(deepcopy=False))
        path = Path(self.config.hydra.sweep.dir) / "optimization_results.yaml"
        write_results(study, objective, redact(self.storage_setting), path, counted)
        log_summary_run(self.config, study, counted, objective, redact(self.storage_setting))
