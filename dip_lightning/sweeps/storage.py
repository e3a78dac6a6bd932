"""Where a study lives: a journal file (default), SQLite, or a database server shared by many workers.

``hydra.sweeper.storage`` takes

* a path ending in ``.journal`` (or ``journal:<path>``): Optuna's journal file storage, an
  append-only log that survives kills and needs no database (the default,
  ``<sweep dir>/optuna.journal``);
* an SQLAlchemy URL (``sqlite:///path.db``, ``postgresql://user@host:5432/db``, ``mysql://...``):
  Optuna's relational storage; with ``heartbeat_interval`` set, trials of a worker that died are
  failed after ``grace_period`` seconds and put back in the queue once;
* null: in memory (not resumable).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from dip_lightning.errors import ConfigError

log = logging.getLogger(__name__)

JOURNAL_PREFIX = "journal:"
JOURNAL_SUFFIX = ".journal"
RDB_SCHEMES = ("sqlite", "postgresql", "mysql", "mariadb", "oracle", "mssql")


def journal_path(storage: Any) -> Path | None:
    """The file of a journal storage setting, else None."""
    if not isinstance(storage, str):
        return None
    if storage.startswith(JOURNAL_PREFIX):
        return Path(storage[len(JOURNAL_PREFIX) :].removeprefix("//"))
    if storage.endswith(JOURNAL_SUFFIX) and "://" not in storage:
        return Path(storage)
    return None


def sqlite_path(storage: Any) -> Path | None:
    """The database file of a ``sqlite:///`` URL, else None."""
    if isinstance(storage, str) and storage.startswith("sqlite:///"):
        return Path(storage[len("sqlite:///") :])
    return None


def is_rdb_url(storage: Any) -> bool:
    return isinstance(storage, str) and storage.split(":", 1)[0].split("+", 1)[0] in RDB_SCHEMES


def redact(storage: Any) -> str:
    """The storage setting for logs and files, without a password in the URL."""
    text = str(storage)
    if is_rdb_url(text) and "@" in text.split("//", 1)[-1]:
        scheme, rest = text.split("//", 1)
        credentials, host = rest.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        return f"{scheme}//{user}{':***' if ':' in credentials else ''}@{host}"
    return text


def open_storage(
    storage: Any,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int = 1,
) -> BaseStorage | None:
    """Build the Optuna storage a setting names, creating a file storage's folder.

    The heartbeat (with a retry of stale trials) is what makes one study safe for many workers;
    Optuna implements it for the relational storage only.
    """
    if storage is None:
        return None
    if isinstance(storage, BaseStorage):
        return storage
    if heartbeat_interval is not None and int(heartbeat_interval) < 1:
        raise ConfigError(
            "hydra.sweeper.heartbeat_interval", heartbeat_interval, "must be >= 1 second or null"
        )
    journal = journal_path(storage)
    if journal is not None:
        if heartbeat_interval is not None:
            raise ConfigError(
                "hydra.sweeper.heartbeat_interval",
                heartbeat_interval,
                "needs a database storage (postgresql://..., mysql://..., sqlite:///...); the journal "
                "file storage has no heartbeat: set it to null, or use a database server for many workers",
            )
        journal.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(journal)))
    if not is_rdb_url(storage):
        raise ConfigError(
            "hydra.sweeper.storage",
            storage,
            f"must be a journal file (<path>{JOURNAL_SUFFIX} or {JOURNAL_PREFIX}<path>), a database URL "
            f"({', '.join(s + '://...' for s in RDB_SCHEMES[:3])}) or null",
        )
    database = sqlite_path(storage)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {}
    if heartbeat_interval is not None:
        interval = int(heartbeat_interval)
        grace = int(grace_period) if grace_period is not None else 2 * interval
        if grace <= interval:
            raise ConfigError(
                "hydra.sweeper.grace_period", grace_period, f"must exceed heartbeat_interval ({interval} s)"
            )
        kwargs = {
            "heartbeat_interval": interval,
            "grace_period": grace,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
        }
    try:
        return connect_rdb(str(storage), kwargs)
    except RuntimeError as error:
        if "upgrade" not in str(error):
            raise
        raise ConfigError(
            "hydra.sweeper.storage",
            redact(storage),
            "holds a study written by an older Optuna. Upgrade it in place once with "
            f"`optuna storage upgrade --storage {redact(storage)}` (back the file up first), then "
            "run the same command again",
        ) from None


def connect_rdb(url: str, kwargs: dict[str, Any], attempts: int = 5) -> RDBStorage:
    """Optuna's relational storage, retried: workers starting together race to create its tables."""
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(attempts):
        try:
            return RDBStorage(url, **kwargs)
        except SQLAlchemyError as error:
            if attempt == attempts - 1:
                raise
            log.info("Storage not ready (%s); trying again.", type(error).__name__)
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def check_old_database(storage: Any, sweep_dir: Path) -> None:
    """Stop when the default journal would silently start a new study beside an older SQLite one."""
    journal = journal_path(storage)
    old = sweep_dir / "optuna.db"
    if journal is None or journal.exists() or not old.is_file():
        return
    raise ConfigError(
        "hydra.sweeper.storage",
        str(journal),
        f"is new, but {old} holds this sweep's study from before (SQLite). To continue it there: "
        f"`optuna storage upgrade --storage sqlite:///{old}` once, then add "
        f"hydra.sweeper.storage=sqlite:///{old}; or move {old} away to start a new study in the journal",
    )


def requeue_running(storage: BaseStorage | None, study_name: str | None) -> list[int]:
    """Put the RUNNING trials of an existing study back to WAITING; returns their numbers.

    With one sweeper per study, a trial RUNNING at the start of a sweep was left by a sweep that
    was killed; it is re-run with the same number, parameters and directory.
    """
    if storage is None or study_name is None:
        return []
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return []
    numbers = []
    for trial in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        if storage.set_trial_state_values(trial._trial_id, TrialState.WAITING):
            numbers.append(trial.number)
    return numbers


def heartbeat_enabled(storage: BaseStorage | None) -> bool:
    return storage is not None and optuna.storages._heartbeat.is_heartbeat_enabled(storage)


@contextmanager
def heartbeats(storage: BaseStorage | None, trials: Iterable[optuna.trial.Trial]) -> Iterator[None]:
    """Record a heartbeat for each trial every interval while the block (the launched jobs) runs."""
    if not heartbeat_enabled(storage):
        yield
        return
    assert storage is not None
    interval = storage.get_heartbeat_interval()
    ids = [trial._trial_id for trial in trials]
    stop = threading.Event()

    def beat() -> None:
        while True:
            for trial_id in ids:
                try:
                    storage.record_heartbeat(trial_id)
                except Exception as error:  # a lost connection must not kill the trials
                    log.warning("Heartbeat of trial %s failed: %s", trial_id, error)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name="optuna-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def retried_numbers(trials: Iterable[FrozenTrial]) -> set[int]:
    """Numbers of trials that failed as stale and were put back in the queue as a new trial."""
    numbers: set[int] = set()
    for trial in trials:
        history = trial.system_attrs.get("retry_history")
        if history:
            numbers.update(int(n) for n in history)
    return numbers


def storages_in(root: Path) -> list[str]:
    """Storage settings of the studies a sweep directory holds or points to (journal, SQLite, study.yaml)."""
    found = [str(path) for path in sorted(root.glob(f"*{JOURNAL_SUFFIX}"))]
    found += [f"sqlite:///{path}" for path in sorted(root.glob("*.db"))]
    pointer = root / "study.yaml"
    if pointer.is_file():
        import yaml

        stored = (yaml.safe_load(pointer.read_text()) or {}).get("storage")
        if stored and "***" not in str(stored) and str(stored) not in found:
            found.append(str(stored))
    return found
