"""Checkpoints to resume a run from: ``checkpoints/last.ckpt`` in the run directory.

A checkpoint is written only at a step boundary (the end of a step, after its callbacks and its
evaluation), where the network (and an operator fitted with it), the optimiser, the trajectory of
the outputs (EMA, peak, curves), the SGLD statistics, the stopping criterion and the random
streams all describe the same step: every ``every_n_steps`` steps, at
the last step, and when a signal stops the run (see :mod:`dip_lightning.job.interrupt`). It is written
to a temporary file and renamed, so ``last.ckpt`` is always a complete checkpoint; a full disk
costs a warning, never the run. Resuming (``ckpt_path=<run dir or file>``) reads it with
``torch.load(weights_only=True)`` and checks that it belongs to the configured method and problem
before any training starts.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from dip_lightning.errors import ConfigError, check_int
from dip_lightning.methods import resume_state
from dip_lightning.methods.base import DeepImagePrior

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
SETTING = "ckpt_path"
ALLOWED = f"must name a run directory (holding {CHECKPOINT_DIR}/{LAST}) or a .ckpt file written by a run"


class StepCheckpoint(pl.Callback):
    """Writes ``<directory>/last.ckpt`` at step boundaries (see the module docs).

    Args:
        directory: where ``last.ckpt`` goes (the run's ``checkpoints`` folder).
        every_n_steps: steps between checkpoints; 0 writes none during training.
        save_last: also write one when training ends (last step, early stop, interrupt).
    """

    def __init__(self, directory: str | Path, every_n_steps: int = 500, save_last: bool = True) -> None:
        self.every_n_steps = check_int("checkpoint.every_n_steps", every_n_steps, 0, extra=" (0: never)")
        self.save_last = bool(save_last)
        self.path = Path(directory) / LAST
        self.saved_step: int | None = None
        self._saving = False

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = int(trainer.global_step)
        periodic = self.every_n_steps > 0 and step % self.every_n_steps == 0
        max_steps = trainer.max_steps
        ending = trainer.should_stop or (max_steps is not None and 0 < max_steps <= step)
        if periodic or (self.save_last and ending):
            self.save(trainer)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._saving:
            mark_epoch_completed(checkpoint)

    def save(self, trainer: pl.Trainer) -> Path | None:
        """Write the checkpoint atomically; on a file-system error warn and go on training."""
        step = int(trainer.global_step)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        self._saving = True
        try:
            if trainer.is_global_zero:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(tmp)
            if trainer.is_global_zero:
                os.replace(tmp, self.path)
        except OSError as error:
            log.warning(
                "Could not write the checkpoint of step %d to %s (%s); training goes on.", step, tmp, error
            )
            if trainer.world_size > 1:
                trainer.strategy.barrier("StepCheckpoint.save")
            return None
        finally:
            self._saving = False
            if trainer.is_global_zero and tmp.exists():
                tmp.unlink()
        self.saved_step = step
        if trainer.is_global_zero:
            log.info("checkpoint of step %d written to %s", step, self.path)
        return self.path


def mark_epoch_completed(checkpoint: dict[str, Any]) -> None:
    """Record the epoch (one step here) being saved as completed, as Lightning does right after
    ``on_train_epoch_end``.

    Saved as it is, the epoch would count as unfinished: a resumed run would take its next step
    inside it, one epoch behind, and run its evaluations (every ``check_val_every_n_epoch``
    epochs) one step late.
    """
    progress = checkpoint["loops"]["fit_loop"]["epoch_progress"]
    for counts in (progress["total"], progress["current"]):
        counts["completed"] = counts["processed"]
    checkpoint["epoch"] = progress["current"]["completed"]


def resolve(value: Any) -> Path:
    """The checkpoint file ``ckpt_path`` names: itself, or ``checkpoints/last.ckpt`` of a run directory."""
    path = Path(str(value)).expanduser()
    if path.is_dir():
        for candidate in (path / CHECKPOINT_DIR / LAST, path / LAST):
            if candidate.is_file():
                return candidate
        raise ConfigError(SETTING, str(value), f"{ALLOWED}; this directory holds no {CHECKPOINT_DIR}/{LAST}")
    if not path.is_file():
        raise ConfigError(SETTING, str(value), f"{ALLOWED}; nothing exists there")
    return path


def read(path: Path) -> dict[str, Any]:
    """Load a checkpoint safely (tensors and primitive containers only) or raise ConfigError."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            SETTING, str(path), f"{ALLOWED}; this file cannot be read as one ({reason})"
        ) from None
    if (
        not isinstance(checkpoint, dict)
        or resume_state.KEY not in checkpoint
        or "state_dict" not in checkpoint
    ):
        raise ConfigError(SETTING, str(path), f"{ALLOWED}; this file is another kind of checkpoint")
    return checkpoint


def check_compatible(checkpoint: dict[str, Any], method: DeepImagePrior, path: Path) -> None:
    """Refuse a checkpoint of another method, network, image or measurement, naming the difference."""
    record = checkpoint[resume_state.KEY]
    problem = method.problem
    found = type(method).__name__
    if record.get("format") != resume_state.FORMAT:
        raise ConfigError(
            SETTING,
            str(path),
            f"holds a checkpoint of format {record.get('format')}, and this version reads only format "
            f"{resume_state.FORMAT}, as it writes into a run directory; start a new run",
        )
    if record["method"] != found:
        raise ConfigError(
            SETTING,
            str(path),
            f"holds a {record['method']} run but the configured method is {found}; resume "
            "with the settings of the run that wrote it (its config.yaml)",
        )
    saved_replicates = int(record["trajectory"]["replicates"])
    if saved_replicates != method.replicates:
        raise ConfigError(
            "method.replicates",
            method.replicates,
            f"the checkpoint {path} holds {saved_replicates} replicates; resume with the same number",
        )
    expected = {name: tuple(t.shape) for name, t in method.state_dict().items()}
    saved = {name: tuple(t.shape) for name, t in checkpoint["state_dict"].items()}
    differences = sorted(
        f"{name}: checkpoint {saved.get(name, 'absent')} vs configured {expected.get(name, 'absent')}"
        for name in expected.keys() | saved.keys()
        if saved.get(name) != expected.get(name)
    )
    if differences:
        shown = "; ".join(differences[:3]) + (
            f" and {len(differences) - 3} more" if len(differences) > 3 else ""
        )
        raise ConfigError(
            SETTING,
            str(path),
            f"holds another network or image size than the configured one ({shown}); resume "
            "with the model, data and task settings of the run that wrote it (its config.yaml)",
        )
    if record["observation"] != resume_state.fingerprint(problem.observation):
        raise ConfigError(
            SETTING,
            str(path),
            "was fitted to another measurement (the data, operator, noise or "
            "observation_seed differ); resume with the settings of the run that wrote it (its config.yaml)",
        )


def warn_on_new_learning_rate(checkpoint: dict[str, Any], method: DeepImagePrior) -> None:
    """The optimiser continues from its saved state, learning rate included: say so if the
    configured one differs, instead of ignoring it silently."""
    configured = getattr(method.optimizer_factory, "keywords", {}).get("lr")
    states = checkpoint.get("optimizer_states") or []
    if configured is None or not states or not states[0].get("param_groups"):
        return
    group = states[0]["param_groups"][0]
    saved = group.get("initial_lr", group.get("lr"))  # a schedule's starting rate, else the rate
    if saved is not None and abs(float(saved) - float(configured)) > 1e-12 * max(abs(float(saved)), 1.0):
        log.warning(
            "The resumed optimiser keeps its saved learning rate %g; method.optimizer.lr=%g is not applied.",
            saved,
            configured,
        )


def check_schedule_budget(checkpoint: dict[str, Any], max_steps: int | None, path: Path) -> None:
    """Refuse to resume a scheduled run with another step budget.

    The cosine schedule's length is ``trainer.max_steps`` of the run that wrote the checkpoint and
    is restored with it; past that length the rate would climb again, and shortening it would
    jump the rate. A run on another budget is a new run.
    """
    schedulers = checkpoint.get("lr_schedulers") or []
    planned = schedulers[0].get("T_max") if schedulers else None
    if planned is not None and max_steps is not None and max_steps != planned:
        raise ConfigError(
            "trainer.max_steps",
            max_steps,
            f"differs from the {planned} steps over which the learning-rate schedule of {path} "
            f"falls to zero (method.lr_schedule); resume with trainer.max_steps={planned}, or start "
            "a new run",
        )


def prepare_resume(value: Any, method: DeepImagePrior, max_steps: int | None = None) -> Path | None:
    """Resolve, read and check ``ckpt_path`` before training; None when not resuming."""
    if value in (None, ""):
        return None
    path = resolve(value)
    checkpoint = read(path)
    check_compatible(checkpoint, method, path)
    warn_on_new_learning_rate(checkpoint, method)
    check_schedule_budget(checkpoint, max_steps, path)
    step = int(checkpoint.get("global_step", 0))
    log.info("resuming from %s at step %d", path, step)
    if max_steps is not None and 0 < max_steps <= step:
        log.warning(
            "The checkpoint is at step %d and trainer.max_steps=%d: nothing is trained, the results of "
            "step %d are written (raise trainer.max_steps to train on).",
            step,
            max_steps,
            step,
        )
    return path
