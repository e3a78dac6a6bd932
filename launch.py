"""Command-line entry point: `python launch.py task=<task> method=<method> [overrides]`.

Returns the configured objective to Hydra so that sweepers (Optuna) can optimise it. In a single
run, errors a user can fix (a bad setting, an unreadable file) are printed as one paragraph with
exit status 2. In a multirun (`-m`), a failed trial is recorded in its metrics.json (status
"failed") and scores the finite penalty, so the other trials of the sweep still run.

Ctrl-C (SIGINT) or SIGTERM stops a run at the next step boundary; its results and a resumable
checkpoint are written, then the process exits with 128 + the signal number: 130 for Ctrl-C, 143
for SIGTERM (a sweep stops after the interrupted trial). See docs/reliability.md.
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

from dip_lightning.errors import DipError
from dip_lightning.job import interrupt


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | tuple[float, ...] | None:
    from dip_lightning.sweeps.trial import run_trial

    try:
        return run_trial(cfg)
    except DipError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)


def is_helper_rank() -> bool:
    """True in a data-parallel process other than global rank zero (started by Lightning or torchrun)."""
    return any(
        int(os.environ.get(name) or 0) > 0 for name in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID")
    )


if __name__ == "__main__":
    if is_helper_rank():
        # Hydra would write this process's log file into rank zero's run directory; log to stdout.
        sys.argv.append("hydra/job_logging=stdout")
    interrupt.install()
    try:
        main()
    except KeyboardInterrupt:
        print(f"{interrupt.describe()}; exit status {interrupt.exit_status()}.", file=sys.stderr, flush=True)
        sys.exit(interrupt.exit_status())
