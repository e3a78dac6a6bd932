"""The ``hydra/sweeper=resumable_optuna`` plugin: a thin shim over the project's Optuna sweeper.

Hydra refuses plugin classes outside the ``hydra_plugins`` package and imports every module in it
at start-up, so this module stays import-light and builds the real sweeper
(:class:`dip_lightning.sweeps.optuna_sweeper.ResumableOptunaSweeper`) only when a sweep starts.
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class ResumableOptunaSweeper(Sweeper):
    """Delegates to :class:`dip_lightning.sweeps.optuna_sweeper.ResumableOptunaSweeper`."""

    def __init__(self, **kwargs: Any) -> None:
        from dip_lightning.sweeps.optuna_sweeper import ResumableOptunaSweeper as Impl

        self.sweeper = Impl(**kwargs)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        return self.sweeper.sweep(arguments)
