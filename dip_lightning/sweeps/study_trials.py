"""Which trials of a study count, and sampler settings: rules shared by the sweeper's workers.

Kept apart from the sweeper's loop so they can be tested on plain in-memory studies.
"""

from __future__ import annotations

import inspect
import logging
import math
from typing import Any

from hydra.utils import get_class
from optuna.trial import FrozenTrial, TrialState

from dip_lightning.sweeps.search_space import SearchSpace
from dip_lightning.sweeps.storage import retried_numbers

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
SURPLUS_ATTR = "surplus"


def grid_size(space: SearchSpace) -> int:
    """Number of points of the grid sampler's grid."""
    return math.prod(len(values) for values in space.grid().values())


def counted_trials(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that make up the study's total, by number.

    Left out: stale trials of a dead worker that were re-queued (their retry counts instead) and
    surplus trials that concurrent workers asked for after the total was reached.
    """
    retried = retried_numbers(trials)
    keep = [
        t
        for t in trials
        if not (t.state == TrialState.FAIL and t.number in retried) and not t.user_attrs.get(SURPLUS_ATTR)
    ]
    return sorted(keep, key=lambda t: t.number)


def takes_setting(node: dict[str, Any], name: str) -> bool:
    """Whether the class a config instantiates has a constructor argument ``name``."""
    try:
        accepted = inspect.signature(get_class(node["_target_"]).__init__).parameters
    except Exception:
        return False
    return name in accepted


def drop_foreign_settings(node: dict[str, Any]) -> dict[str, Any]:
    """Leave out settings the chosen sampler does not take.

    A search config tunes its default sampler (``n_startup_trials`` of GP); choosing another one
    on the command line (``hydra/sweeper/sampler=random``) keeps those keys, which would fail.
    """
    try:
        target = get_class(node["_target_"])
        accepted = inspect.signature(target.__init__).parameters
    except Exception:
        return node
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return node
    foreign = [k for k in node if not k.startswith("_") and k not in accepted]
    for key in foreign:
        log.info("Sampler %s takes no '%s': setting left out.", node["_target_"], key)
    return {k: v for k, v in node.items() if k not in foreign}
