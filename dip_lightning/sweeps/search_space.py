"""The search space of a sweep, from Hydra's override grammar to Optuna distributions.

Users of hydra-optuna-sweeper write ``hydra.sweeper.params`` (and command-line sweeps) as

* ``interval(a, b)``: a float in [a, b]; ``tag(log, interval(a, b))`` on a log scale;
  ``tag(int, interval(a, b))`` an integer (``tag(int, log, interval(...))`` both);
* ``choice(x, y, ...)`` or ``x,y,...``: one of the values (numbers, strings, lists, dicts);
* ``range(start, stop[, step])``: Hydra's range, ``stop`` excluded (integers or floats);
* anything else: a fixed override passed to every trial.

The same grammar is kept here so that existing search configs and habits carry over; the
parsing is Hydra's own override parser, the mapping to distributions is ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.errors import HydraException
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from dip_lightning.errors import ConfigError

PRIMITIVE = (str, int, float, bool, type(None))
KNOWN_TAGS = {"log", "int"}


@dataclass
class SearchSpace:
    """Distributions to sample, fixed overrides, and how to write a sampled value back as an override."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: dict[str, str] = field(default_factory=dict)
    # The override text of every categorical choice (lists and dicts are stored as that text).
    encoded: dict[str, dict[Any, str]] = field(default_factory=dict)
    # Keys in the order the user wrote them (``a={x:1} a.x=choice(1,2)`` needs the order kept).
    order: list[str] = field(default_factory=list)

    def overrides(self, params: dict[str, Any]) -> list[str]:
        """One trial's overrides: fixed ones and sampled values, in the order they were written."""
        items = dict(self.fixed)
        for name, value in params.items():
            items[name] = self.encoded.get(name, {}).get(value, format_value(value))
        position = {key: index for index, key in enumerate(self.order)}
        keys = sorted(items, key=lambda key: position.get(key, len(position)))
        return [f"{key}={items[key]}" for key in keys]

    def grid(self) -> dict[str, list[Any]]:
        """Every combination, for the grid sampler: only choice() and range() can be enumerated."""
        grid = {}
        for name, distribution in self.distributions.items():
            if isinstance(distribution, CategoricalDistribution):
                grid[name] = list(distribution.choices)
            elif isinstance(distribution, IntDistribution) and not distribution.log:
                grid[name] = list(range(distribution.low, distribution.high + 1, distribution.step))
            elif isinstance(distribution, FloatDistribution) and distribution.step is not None:
                count = round((distribution.high - distribution.low) / distribution.step) + 1
                grid[name] = [distribution.low + i * distribution.step for i in range(count)]
            else:
                raise ConfigError(
                    f"hydra.sweeper.params.{name}",
                    repr(distribution),
                    "cannot be enumerated by the grid sampler: use choice(...) or range(...)",
                )
        return grid


def format_value(value: Any) -> str:
    """A sampled value as override text (``true``/``null`` for Python's True/None)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def distribution_of(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override (choice, range or interval)."""
    name = override.get_key_element()
    value = override.value()
    tags = set(getattr(value, "tags", set()) or set())
    unknown = tags - KNOWN_TAGS
    if unknown:
        raise ConfigError(
            f"hydra.sweeper.params.{name}", sorted(unknown), f"tags must be among {sorted(KNOWN_TAGS)}"
        )
    if isinstance(value, IntervalSweep):
        low, high = float(value.start), float(value.end)
        log = "log" in tags
        if not low < high or (log and low <= 0):
            allowed = "0 < start < end for a log interval" if log else "start < end"
            raise ConfigError(f"hydra.sweeper.params.{name}", f"interval({low}, {high})", f"needs {allowed}")
        if "int" in tags:
            return IntDistribution(math.ceil(low), math.floor(high), log=log)
        return FloatDistribution(low, high, log=log)
    if isinstance(value, RangeSweep):
        if "log" in tags:
            raise ConfigError(
                f"hydra.sweeper.params.{name}", "tag(log, range(...))", "use tag(log, interval(...))"
            )
        points = list(override.sweep_iterator())
        if not points:
            raise ConfigError(f"hydra.sweeper.params.{name}", str(value), "is an empty range")
        if all(isinstance(p, int) for p in points):
            step = int(value.step or 1)
            if step < 0:
                return CategoricalDistribution(points)
            return IntDistribution(points[0], points[-1], step=step)
        return CategoricalDistribution([float(p) for p in points])
    if isinstance(value, ChoiceSweep):
        return CategoricalDistribution(choice_values(override)[0])
    raise ConfigError(
        f"hydra.sweeper.params.{name}", str(value), "must be choice(...), range(...) or interval(...)"
    )


def choice_values(override: Override) -> tuple[list[Any], dict[Any, str]]:
    """A choice's values as Optuna can store them, and the override text of each."""
    values, encoded = [], {}
    for raw, text in zip(override.sweep_iterator(), override.sweep_string_iterator()):
        value = raw if isinstance(raw, PRIMITIVE) else text
        values.append(value)
        encoded[value] = text if isinstance(raw, str) or not isinstance(raw, PRIMITIVE) else format_value(raw)
    return values, encoded


def parse_search_space(params: dict[str, Any] | None, arguments: list[str]) -> SearchSpace:
    """``hydra.sweeper.params`` then the command line (which wins for the same key)."""
    lines = [f"{key}={value}" for key, value in (params or {}).items()] + list(arguments)
    parser = OverridesParser.create()
    space = SearchSpace()
    for line in lines:
        try:
            override = parser.parse_override(line)
        except HydraException as error:
            raise ConfigError("hydra.sweeper.params", line, f"is not a valid override ({error})") from None
        key = override.get_key_element()
        space.distributions.pop(key, None)
        space.fixed.pop(key, None)
        space.encoded.pop(key, None)
        if key in space.order:
            space.order.remove(key)
        space.order.append(key)
        if override.is_sweep_override():
            space.distributions[key] = distribution_of(override)
            if override.is_choice_sweep():
                space.encoded[key] = choice_values(override)[1]
        else:
            space.fixed[key] = override.get_value_element_as_str()
    return space
