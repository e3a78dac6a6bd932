"""Command-line entry point: `python launch.py task=<task> method=<method> [overrides]`.

Returns the configured objective to Hydra so that sweepers (Optuna) can optimise it. Errors a
user can fix (a bad setting, an unreadable file) are printed as one paragraph with exit status 2.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from dip_lightning.errors import DipError


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | tuple[float, ...]:
    from dip_lightning.run import run

    try:
        return run(cfg)
    except DipError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
