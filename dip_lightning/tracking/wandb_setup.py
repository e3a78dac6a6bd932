"""Weights & Biases set-up that never kills a run.

Offline mode is the default and needs no account; online mode without an API key, or without a
connection to the W&B server, falls back to offline with a warning, and a W&B run that cannot be
started at all costs a warning, not the run. Every job finishes its W&B run so that the jobs of a
multirun each get their own run (Lightning's logger would otherwise reuse the first one).
"""

from __future__ import annotations

import logging
import netrc
import os
import socket
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.wandb.ai"
PROBE_TIMEOUT_S = 3.0
SYNC_HINT = "Upload later with `wandb sync <run dir>/wandb/offline-run-*`."
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL


def has_wandb_key() -> bool:
    """True if credentials are in the environment or in the netrc file `wandb login` writes.

    Read with the standard library: W&B's own helpers for this move between its versions.
    """
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
    try:
        entry = netrc.netrc(path).authenticators(urlparse(base_url()).hostname or "")
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def server_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the W&B server (``WANDB_BASE_URL``) opens within ``timeout``.

    Behind a proxy the server cannot be probed directly; the answer is then yes and a failing
    start is caught by :func:`make_wandb_logger`.
    """
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return True
    url = urlparse(base_url())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_offline(offline: bool) -> bool:
    """Return the mode to use: online only when asked for, a key exists and the server answers."""
    if offline:
        return True
    if os.environ.get("WANDB_MODE") in {"offline", "disabled"}:
        return True
    if not has_wandb_key():
        warnings.warn(
            "logger.wandb.offline=false but no W&B API key was found (WANDB_API_KEY or `wandb login`); "
            f"logging offline instead. {SYNC_HINT}",
            stacklevel=2,
        )
        return True
    if not server_reachable():
        warnings.warn(
            f"logger.wandb.offline=false but the W&B server {base_url()} cannot be reached; logging offline "
            f"instead. {SYNC_HINT}",
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


def make_wandb_logger(kwargs: dict[str, Any]) -> Any:
    """A started WandbLogger, falling back to offline and then to none: W&B never ends a run.

    The W&B run is started here, before training, so that a failure (a rejected key, a server
    that stops answering, an unwritable directory) is handled once, with a warning.
    """
    from pytorch_lightning.loggers import WandbLogger

    attempts = [kwargs] if kwargs.get("offline") else [kwargs, {**kwargs, "offline": True}]
    for attempt in attempts:
        try:
            logger = WandbLogger(**attempt)
            # Lightning passes W&B's retired `anonymous` setting (as None), which only prints a
            # deprecation warning above every run's summary.
            logger._wandb_init.pop("anonymous", None)
            _ = logger.experiment
            return logger
        except Exception as error:
            finish_wandb(exit_code=1)
            mode = "offline" if attempt.get("offline") else "online"
            then = "trying offline" if attempt is not attempts[-1] else "going on without W&B logging"
            warnings.warn(f"Could not start the W&B run {mode} ({error}); {then}.", stacklevel=2)
            if not attempt.get("offline"):
                os.environ["WANDB_MODE"] = "offline"
    return None


def prepare_wandb_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Apply the offline fallback to a WandbLogger's keyword arguments."""
    kwargs = dict(kwargs)
    kwargs["offline"] = resolve_offline(bool(kwargs.get("offline", True)))
    if kwargs["offline"]:
        os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    return kwargs
