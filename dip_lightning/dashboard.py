"""``python -m dip_lightning.dashboard <sweep dir or storage>``: optuna-dashboard on a sweep's study.

The dashboard shows the study's history, parallel coordinates, parameter importances, slice
plots and every trial, live while the sweep runs. It binds to 127.0.0.1 unless ``--host`` says
otherwise: on a shared machine or cluster node, reach it through an SSH tunnel
(``ssh -L 8080:127.0.0.1:8080 node``) rather than opening it to the network.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dip_lightning.errors import ConfigError
from dip_lightning.sweeps.storage import is_rdb_url, journal_path, open_storage, redact, storages_in


def resolve_storage(target: str) -> str:
    """The storage setting behind a sweep directory, a journal or SQLite file, or a database URL."""
    path = Path(target)
    if path.is_dir():
        found = storages_in(path)
        if not found:
            raise ConfigError(
                "sweep directory",
                target,
                "holds no study (optuna.journal, *.db or a study.yaml naming a database); pass the "
                "storage URL instead, e.g. postgresql://user@host:5432/db",
            )
        return found[0]
    if path.is_file() and path.suffix == ".db":
        return f"sqlite:///{path.resolve()}"
    if path.is_file() or journal_path(target) is not None:
        if not path.is_file() and not Path(str(journal_path(target))).is_file():
            raise ConfigError("storage", target, "no such journal file")
        return str(journal_path(target) or path)
    if is_rdb_url(target):
        return target
    raise ConfigError(
        "storage", target, "must be a sweep directory, an optuna.journal or .db file, or a database URL"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dip_lightning.dashboard",
        description="Open optuna-dashboard on a sweep's study (history, parallel coordinates, importances, slices).",
    )
    parser.add_argument(
        "target", help="sweep directory (outputs/sweeps/<study>), journal/SQLite file or database URL"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)"
    )
    parser.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    args = parser.parse_args(argv)
    try:
        setting = resolve_storage(args.target)
        storage = open_storage(setting)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from optuna_dashboard import run_server

    print(f"optuna-dashboard on {redact(setting)}: http://{args.host}:{args.port}/dashboard", flush=True)
    run_server(storage, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
