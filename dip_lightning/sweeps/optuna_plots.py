"""Optuna's own plots of a study, written beside the sweep report's: history, parallel
coordinates and parameter importances (the views optuna-dashboard shows, as files).

Only trials whose run completed are plotted: the finite penalty of a diverged or failed trial
(-1000 dB) would squash every other point into one line.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def completed_copy(directions: list[str], trials: list[Any]) -> Any:
    """An in-memory study holding only the trials whose run completed."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.create_study(directions=directions)
    ok = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE and t.user_attrs.get("status", "completed") == "completed"
    ]
    study.add_trials(ok)
    return study


def optuna_plots(directions: list[str], trials: list[Any], metrics: list[str], out: Path) -> list[Path]:
    """Write optuna_history.png, optuna_parallel_coordinate.png, optuna_importances.png; returns those written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = completed_copy(directions, trials)
    if len(study.trials) < 2:
        return []
    kwargs: dict[str, Any] = {"target_name": metrics[0] if metrics else "Objective value"}
    if len(directions) > 1:
        kwargs["target"] = lambda t: t.values[0]
    plots: dict[str, Callable[..., Any]] = {
        "optuna_history.png": ovm.plot_optimization_history,
        "optuna_parallel_coordinate.png": ovm.plot_parallel_coordinate,
        "optuna_importances.png": ovm.plot_param_importances,
    }
    written = []
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                axes = plot(study, **kwargs)
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.set_size_inches(7, 4.5)
            figure.tight_layout()
            figure.savefig(out / name, dpi=110)
            plt.close(figure)
            written.append(out / name)
        except Exception as error:  # one plot that cannot be drawn must not cost the report
            log.warning("Optuna plot %s skipped: %s", name, error)
    return written
