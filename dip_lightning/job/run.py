"""One job: build the problem and the method from the config, fit, evaluate, save, return the objective.

Everything that can be checked cheaply (files, sizes, settings, the checkpoint to resume from) is
built and validated before the first training step, so bad input fails in seconds. Whatever happens
during training (divergence, Ctrl-C, SIGTERM), the best result so far is written, a checkpoint is
kept and the W&B run is finished; see docs/reliability.md.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from dip_lightning.config import build
from dip_lightning.data.datamodule import SingleObservationDataModule
from dip_lightning.data.io import fit_size
from dip_lightning.errors import DipError, DivergenceError, InputFileError, OutputWriteError
from dip_lightning.job import interrupt
from dip_lightning.job.checkpointing import CHECKPOINT_DIR, StepCheckpoint, prepare_resume
from dip_lightning.job.results import RunResult, finalise
from dip_lightning.job.run_settings import check_run_settings, trainer_error
from dip_lightning.methods.base import DeepImagePrior
from dip_lightning.methods.replicates import check_stopping
from dip_lightning.models.acceleration import accelerate, architecture, execution_settings
from dip_lightning.physics.holdout import hold_out
from dip_lightning.physics.observation import InverseProblem, make_observation
from dip_lightning.stopping.callback import StoppingCallback
from dip_lightning.tracking.wandb_setup import finish_wandb, make_wandb_logger, prepare_wandb_kwargs

log = logging.getLogger(__name__)

T = TypeVar("T")

STATUS_COMPLETED = "completed"
STATUS_DIVERGED = "diverged"
STATUS_INTERRUPTED = "interrupted"


def quiet_third_party_logs() -> None:
    """Silence chatter that hides the run summary (Lightning tips, W&B banners)."""
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "wandb"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*Starting from v1.9.0, `tensorboardX`.*")
    warnings.filterwarnings("ignore", message=".*The number of training batches.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def output_directory(cfg: DictConfig) -> Path:
    """The Hydra run directory of this job (or ``paths.output_dir`` outside Hydra)."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.paths.output_dir)


def multirun_group(cfg: DictConfig) -> str | None:
    """W&B group of this job: the configured one, else the sweep directory inside a multirun."""
    if cfg.get("wandb_group"):
        return str(cfg.wandb_group)
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().sweep.dir).name
    return None


def size_multiple(cfg: DictConfig) -> tuple[int, int]:
    """The image-size multiple and minimum side the configured network needs."""
    probe = build(architecture(cfg.model))(in_channels=1, out_channels=1)
    return int(getattr(probe, "size_multiple", 1)), int(getattr(probe, "min_size", 1))


def _normalised_path(path: object) -> str:
    return os.path.abspath(os.path.expanduser(str(path)))


def setting_holding(settings: DictConfig, path: object) -> str | None:
    """The key of ``settings`` (one config group) whose value is the file ``path``, if any.

    How a file is traced to its setting when the component that read it did not name it.
    """
    try:
        values = OmegaConf.to_container(settings, resolve=True)
    except Exception:  # an unresolvable entry: no key can be named
        return None
    target = _normalised_path(path)
    for key, value in (values or {}).items():  # type: ignore[union-attr]
        if isinstance(value, str) and value and _normalised_path(value) == target:
            return str(key)
    return None


def built(group: str, cfg: DictConfig, make: Callable[[], T]) -> T:
    """``make()``, with a file error named by the config ``group`` that configured the component.

    The component names its own parameter (or the file is traced to the group's setting that
    holds it); the job only adds the group, so it never needs to know a component's settings.
    """
    try:
        return make()
    except InputFileError as error:
        raise error.in_group(group, setting_holding(cfg[group], error.path)) from None


def build_problem(cfg: DictConfig) -> InverseProblem:
    """Load the image, fit its size to the network, build the operator and the observation.

    A file error names the setting that gave the file, as ``<group>.<parameter>``.
    """
    loaded = built("data", cfg, lambda: build(cfg.data).load())
    multiple, min_size = size_multiple(cfg)
    source_key = setting_holding(cfg.data, loaded.source)
    image, _ = fit_size(
        loaded.image,
        multiple,
        min_size,
        policy=str(cfg.size_policy),
        setting=f"data.{source_key}" if source_key else "data",
        value=cfg.data[source_key] if source_key else loaded.name,
    )
    operator = built("operator", cfg, lambda: build(cfg.operator)(image_shape=tuple(image.shape[-2:])))
    noise = built("noise", cfg, lambda: build(cfg.noise))
    problem = make_observation(
        image,
        operator,
        noise,
        seed=int(cfg.observation_seed),
        name=loaded.name,
        intensity_transform=loaded.transform.to_dict(),
    )
    return hold_out(problem, cfg.get("validation_fraction") or 0.0, seed=int(cfg.observation_seed))


def build_method(cfg: DictConfig, problem: InverseProblem) -> DeepImagePrior:
    """The configured method bound to ``problem``, its network set to run as ``model`` asks.

    A replicated run (``method.replicates`` > 1) is checked against the stopping rule before any
    network is built.
    """
    regulariser_cfg = cfg.get("regulariser")
    image_prior = build(regulariser_cfg) if regulariser_cfg and "_target_" in regulariser_cfg else None
    method = build(cfg.method, net=build(architecture(cfg.model)), image_prior=image_prior)
    if method.replicates > 1:
        check_stopping(method.replicates, build(cfg.stopping.criterion))
    method.attach(problem)
    if cfg.get("calibration") is not None:
        method.calibration = build(cfg.calibration).check(problem.image_shape)
    accelerate(method.net, **execution_settings(cfg.model))
    return method


def build_loggers(cfg: DictConfig, output_dir: Path) -> list[Any]:
    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        if logger_cfg is None or "_target_" not in logger_cfg:
            continue
        kwargs: dict[str, Any] = {}
        if name == "wandb":
            kwargs = prepare_wandb_kwargs(OmegaConf.to_container(logger_cfg, resolve=True))
            kwargs.pop("_target_")
            kwargs["group"] = multirun_group(cfg)
            kwargs["save_dir"] = str(output_dir)
            kwargs["config"] = OmegaConf.to_container(cfg, resolve=True)
            kwargs.pop("_target_", None)
            wandb_logger = make_wandb_logger(kwargs)
            if wandb_logger is not None:
                declare_objective(cfg, wandb_logger)
                loggers.append(wandb_logger)
            continue
        loggers.append(build(logger_cfg, save_dir=str(output_dir)))
    return loggers


def declare_objective(cfg: DictConfig, wandb_logger: Any) -> None:
    """Make the sweep's objective a summary metric (max or min) of the W&B run."""
    from dip_lightning.sweeps.objective import objective_from_config
    from dip_lightning.sweeps.wandb_summary import define_objective

    try:
        objective = objective_from_config(cfg)
    except DipError:
        return  # a bad objective setting is reported where a sweep reads it
    define_objective(wandb_logger.experiment, objective.names, objective.directions)


def build_callbacks(cfg: DictConfig, output_dir: Path) -> tuple[list[pl.Callback], StoppingCallback]:
    """The configured callbacks, the stopping rule, then the two that act at the step boundary.

    Their order matters: the signal check and the checkpoint come last, so that a checkpoint
    holds a step every other callback has finished with.
    """
    stopping = StoppingCallback(build(cfg.stopping.criterion), report=cfg.stopping.get("report", "output"))
    callbacks = [build(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    checkpoint = StepCheckpoint(output_dir / CHECKPOINT_DIR, **(cfg.get("checkpoint") or {}))
    return [*callbacks, stopping, interrupt.StopOnSignal(), checkpoint], stopping


def build_trainer(cfg: DictConfig, loggers: list[Any], callbacks: list[pl.Callback]) -> pl.Trainer:
    """The Lightning trainer; a setting it refuses is reported as that setting's error."""
    try:
        return build(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    except InstantiationException as error:
        readable = trainer_error(error, cfg.trainer)
        if readable is None:
            raise
        raise readable from None


def find_callback(trainer: pl.Trainer, kind: type) -> Any:
    return next((c for c in trainer.callbacks if isinstance(c, kind)), None)


def checkpoint_metrics(trainer: pl.Trainer) -> dict[str, Any]:
    """Where the resumable checkpoint is and which step it holds (for metrics.json)."""
    saver = find_callback(trainer, StepCheckpoint)
    if saver is None or not saver.path.is_file():
        return {}
    return {"checkpoint": str(saver.path), "checkpoint_step": saver.saved_step}


def objective_value(cfg: DictConfig, result: RunResult) -> float | tuple[float, ...]:
    """The value(s) Optuna optimises; a finite penalty (never NaN) for diverged or missing runs."""
    names = cfg.optimized_metric
    directions = cfg.optimization_direction
    if not isinstance(names, ListConfig | list | tuple):
        names, directions = [names], [directions]
    values = []
    for name, direction in zip(names, directions):
        value = result.metrics.get(str(name))
        penalty = abs(float(cfg.objective_penalty))
        if result.status == STATUS_DIVERGED or not isinstance(value, int | float) or not math.isfinite(value):
            value = -penalty if direction == "maximize" else penalty
        values.append(float(value))
    return values[0] if len(values) == 1 else tuple(values)


def run(cfg: DictConfig) -> float | tuple[float, ...]:
    """Run one job end to end and return its objective value.

    An interrupted run (Ctrl-C, SIGTERM) writes its results and checkpoint, then raises
    KeyboardInterrupt so that the command line exits with 128 + the signal number and a sweep
    stops; a diverged run returns the penalty.
    """
    interrupt.reset()
    with interrupt.installed():
        return run_job(cfg)


def run_job(cfg: DictConfig) -> float | tuple[float, ...]:
    """The body of :func:`run`, with the signal handlers in place."""
    quiet_third_party_logs()
    check_run_settings(cfg)
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    output_dir = output_directory(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)

    problem = build_problem(cfg)
    method = build_method(cfg, problem)
    resume_from = prepare_resume(cfg.get("ckpt_path"), method, cfg.trainer.get("max_steps"))
    callbacks, stopping = build_callbacks(cfg, output_dir)
    loggers = build_loggers(cfg, output_dir)
    try:
        trainer = build_trainer(cfg, loggers, callbacks)
    except Exception:
        finish_wandb(exit_code=1)
        raise

    with interrupt.phase(interrupt.Phase.DEFERRED):
        status, reason, seconds = fit(trainer, method, resume_from)
        if trainer.global_rank == 0 and status == STATUS_COMPLETED:
            status, reason, seconds = after_fit(method, seconds)
        if trainer.global_rank != 0:
            # A data-parallel helper rank only trains: rank zero evaluates, writes the files and logs.
            if status == STATUS_INTERRUPTED:
                raise KeyboardInterrupt
            return objective_value(cfg, RunResult(status=status, metrics={}, output_dir=output_dir))
        try:
            result = write_results(
                method,
                problem,
                stopping,
                trainer,
                output_dir,
                cfg,
                status=status,
                reason=reason,
                seconds=seconds,
                extra_metrics={
                    **checkpoint_metrics(trainer),
                    **({"resumed_from": str(resume_from)} if resume_from else {}),
                },
            )
        finally:
            finish_wandb(exit_code=0 if status == STATUS_COMPLETED else 1)
    if status == STATUS_INTERRUPTED or interrupt.requested():
        raise KeyboardInterrupt(interrupt.describe())
    return objective_value(cfg, result)


def write_results(
    method: DeepImagePrior,
    problem: InverseProblem,
    stopping: StoppingCallback,
    trainer: pl.Trainer,
    output_dir: Path,
    cfg: DictConfig,
    **kwargs: Any,
) -> RunResult:
    """:func:`finalise`, with a file-system failure (a full disk) reported as one paragraph that
    says how to get the results once it is fixed: the checkpoint holds the trained state."""
    try:
        return finalise(method, problem, stopping, trainer, output_dir, cfg, **kwargs)
    except OSError as error:
        saver = find_callback(trainer, StepCheckpoint)
        hint = ""
        if saver is not None and saver.path.is_file():
            hint = (
                f"The state of step {saver.saved_step} is in {saver.path}: once the problem is fixed, run "
                f"the same command with ckpt_path={saver.path} to continue from there and write the results"
            )
        raise OutputWriteError(output_dir, str(error), hint) from error


def after_fit(method: DeepImagePrior, seconds: float) -> tuple[str, str, float]:
    """Run the method's :meth:`~DeepImagePrior.after_fit` step; its time counts in the run's.

    A signal raises at once here: training is over and its checkpoint written, so stopping loses
    only this step, and the results are those of the fitted network.
    """
    start = time.perf_counter()
    try:
        with interrupt.phase(interrupt.Phase.IMMEDIATE):
            method.after_fit()
    except KeyboardInterrupt:
        reason = f"{interrupt.describe()} during the step after training; reporting the fitted network"
        log.warning(reason)
        return STATUS_INTERRUPTED, reason, seconds + time.perf_counter() - start
    return STATUS_COMPLETED, "", seconds + time.perf_counter() - start


def fit(trainer: pl.Trainer, method: DeepImagePrior, resume_from: Path | None) -> tuple[str, str, float]:
    """Train, stopping at a step boundary on a signal; return the status, its reason and the time."""
    status, reason = STATUS_COMPLETED, ""
    start = time.perf_counter()
    try:
        with interrupt.phase(interrupt.Phase.STEP_BOUNDARY):
            trainer.fit(
                method,
                datamodule=SingleObservationDataModule(),
                ckpt_path=str(resume_from) if resume_from else None,
                weights_only=True,
            )
        if method.resumed_record is not None:
            # No step was left to train, so Lightning skipped on_train_start, where the saved EMA,
            # curves and random state are restored: restore them for the results.
            method.on_train_start()
    except DivergenceError as error:
        status, reason = STATUS_DIVERGED, str(error)
        log.error("%s Keeping the best result so far.", error)
    except (KeyboardInterrupt, SystemExit) as error:
        if isinstance(error, SystemExit) and not trainer.interrupted:
            raise
        status = STATUS_INTERRUPTED
    stopper = find_callback(trainer, interrupt.StopOnSignal)
    if stopper is not None and stopper.stopped_at is not None:
        status = STATUS_INTERRUPTED
    if status == STATUS_INTERRUPTED:
        reason = f"{interrupt.describe()} at step {trainer.global_step}"
        saver = find_callback(trainer, StepCheckpoint)
        if saver is not None and saver.saved_step is not None:
            reason += f"; resume with ckpt_path={saver.path.parent.parent}"
    return status, reason, time.perf_counter() - start
