"""Checks of the run-level settings (seeds, threads, step counts, checkpoints), before any work.

The settings of the data, operator, noise, model and method are checked where they are used,
when those objects are built. What is left are the top-level keys and the trainer's counters,
which torch and Lightning reject late (inside ``fit``) or not at all (``max_steps=0`` would report
an untrained network as a result), each with a message that does not name the setting.
"""

from __future__ import annotations

import re

from hydra.errors import InstantiationException
from omegaconf import DictConfig

from dip_lightning.errors import ConfigError, check_int

NO_STEP_LIMIT = -1


def check_run_settings(cfg: DictConfig) -> None:
    """Raise ConfigError for a top-level or trainer setting no run can use."""
    check_int("seed", cfg.get("seed"), 0)
    check_int("observation_seed", cfg.get("observation_seed"), 0)
    if cfg.get("num_threads") is not None:
        check_int("num_threads", cfg.num_threads, 1, extra=" or null (torch's default)")
    trainer = cfg.get("trainer") or {}
    max_steps = trainer.get("max_steps")
    if "max_steps" in trainer and not (isinstance(max_steps, int) and max_steps == NO_STEP_LIMIT):
        check_int("trainer.max_steps", max_steps, 1, extra=" or -1 (no limit: a stopping rule ends the run)")
    if trainer.get("check_val_every_n_epoch") is not None:
        check_int("trainer.check_val_every_n_epoch", trainer.check_val_every_n_epoch, 1)
    method = cfg.get("method") or {}
    if method.get("lr_schedule", "constant") != "constant" and trainer.get("max_steps", -1) == -1:
        raise ConfigError(
            "method.lr_schedule",
            method.lr_schedule,
            "needs a step budget: set trainer.max_steps, or use constant with a stopping rule",
        )
    checkpoint = cfg.get("checkpoint") or {}
    if "every_n_steps" in checkpoint:
        check_int("checkpoint.every_n_steps", checkpoint.every_n_steps, 0)


def trainer_error(error: InstantiationException, trainer_cfg: DictConfig) -> ConfigError | None:
    """Lightning's refusal of a trainer setting as a ConfigError naming ``trainer.<key>``.

    The key is the trainer setting the message mentions first; None if it mentions none.
    """
    cause = error.__cause__
    if cause is None:
        return None
    message = str(cause).strip()
    mentions = []
    for key in trainer_cfg:
        found = re.search(rf"\b{re.escape(str(key))}\b", message, flags=re.IGNORECASE)
        if key != "_target_" and found:
            mentions.append((found.start(), -len(str(key)), str(key)))
    if not mentions:
        return None
    key = min(mentions)[2]
    return ConfigError(f"trainer.{key}", trainer_cfg.get(key), f"Lightning does not accept it ({message})")
