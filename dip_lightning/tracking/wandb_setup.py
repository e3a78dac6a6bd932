"""Weights & Biases set-up that never kills a run.

Offline mode is the default and needs no account; online mode without an API key falls back to
offline with a warning. Every job finishes its W&B run so that the jobs of a multirun each get
their own run (Lightning's logger would otherwise reuse the first one).
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

log = logging.getLogger(__name__)


def has_wandb_key() -> bool:
    """True if an API key is available from the environment or the netrc file."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        from wandb.sdk.lib import apikey

        return bool(apikey.api_key())
    except Exception:
        return False


def resolve_offline(offline: bool) -> bool:
    """Return the mode to use: online only when asked for and a key exists."""
    if offline:
        return True
    if os.environ.get("WANDB_MODE") in {"offline", "disabled"}:
        return True
    if not has_wandb_key():
        warnings.warn(
            "logger.wandb.offline=false but no W&B API key was found (WANDB_API_KEY or `wandb login`); "
            "logging offline instead. Upload later with `wandb sync <run dir>/wandb/offline-run-*`.",
            stacklevel=2,
        )
        return True
    return False


def finish_wandb(exit_code: int = 0) -> None:
    """Close the current W&B run, if any, so the next job starts a new one."""
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)
    except Exception as error:
        log.warning("Could not finish the W&B run cleanly: %s", error)


def wandb_run_dir() -> str | None:
    """Directory of the active W&B run (offline files live there)."""
    try:
        import wandb

        return None if wandb.run is None else str(wandb.run.dir)
    except Exception:
        return None


def prepare_wandb_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Apply the offline fallback to a WandbLogger's keyword arguments."""
    kwargs = dict(kwargs)
    kwargs["offline"] = resolve_offline(bool(kwargs.get("offline", True)))
    if kwargs["offline"]:
        os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    return kwargs
