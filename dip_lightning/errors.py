"""Errors a user can act on: each names the setting or file at fault and what is allowed."""

from __future__ import annotations

import math
import numbers
import operator

import numpy as np


class DipError(Exception):
    """Base class of the errors the command line reports as a one-paragraph message."""


class ConfigError(DipError, ValueError):
    """A setting has a value that is not allowed.

    The message names the setting (as it is written on the command line) and the allowed values.
    """

    def __init__(self, setting: str, value: object, allowed: str) -> None:
        self.setting = setting
        self.value = value
        self.allowed = allowed
        super().__init__(f"Invalid setting {setting}={value!r}: {allowed}.")


class InputFileError(DipError, OSError):
    """An input file is missing, unreadable, of an unknown type or holds unusable data.

    ``setting`` names what gave the file. A component (an operator, a data source) names its own
    parameter (``mask_path``) when it raises; the job that built the component from a config
    group adds the group (:meth:`in_group`: ``operator.mask_path``), so no code outside the
    component needs to know its parameter names. :meth:`for_setting` adds a name where the caller
    knows it and the reader did not.
    """

    def __init__(self, path: object, reason: str, setting: str | None = None) -> None:
        self.path = path
        self.reason = reason
        self.setting = setting
        named = f" (set by {setting})" if setting else ""
        super().__init__(f"Cannot use input file '{path}'{named}: {reason}.")

    def for_setting(self, setting: str) -> InputFileError:
        """This error naming ``setting``, unless it already names one."""
        return self if self.setting else InputFileError(self.path, self.reason, setting)

    def in_group(self, group: str, parameter: str | None = None) -> InputFileError:
        """This error as the command line spells it, for a component built from config ``group``.

        The component's own parameter name (or else ``parameter``, when the caller found which one
        held the file) is prefixed with ``group``: ``mask_path`` -> ``operator.mask_path``; with
        neither, the group itself is named. A setting that already starts with ``group.`` stays.
        """
        if self.setting and self.setting.startswith(f"{group}."):
            return self
        name = self.setting or parameter
        return InputFileError(self.path, self.reason, f"{group}.{name}" if name else group)


class OutputWriteError(DipError, OSError):
    """The results cannot be written (a full disk, a read-only or vanished directory)."""

    def __init__(self, directory: object, reason: str, hint: str = "") -> None:
        self.directory = directory
        self.reason = reason
        super().__init__(
            f"Cannot write the results into '{directory}': {reason}." + (f" {hint}." if hint else "")
        )


class DivergenceError(DipError, ArithmeticError):
    """Training produced a non-finite loss or parameters; the best result so far is kept."""

    def __init__(self, step: int, what: str = "loss") -> None:
        self.step = step
        super().__init__(f"Training diverged at step {step}: the {what} became NaN or infinite.")


def _is_real_number(value: object) -> bool:
    """A real number of Python or numpy; bools are flags, not numbers."""
    if isinstance(value, bool | np.bool_):
        return False
    return isinstance(value, numbers.Real)


def check_finite(setting: str, value: object) -> float:
    """Return ``value`` if it is a finite real number (int, float or numpy scalar), else raise."""
    if not _is_real_number(value) or not math.isfinite(float(value)):
        raise ConfigError(setting, value, "must be a finite number")
    return value  # type: ignore[return-value]


def check_positive(
    setting: str, value: object, *, allow_zero: bool = False, allow_inf: bool = False
) -> float:
    """Return ``value`` if it is a number > 0 (>= 0 when ``allow_zero``), finite unless
    ``allow_inf``, else raise ConfigError. NaN, bools and non-numbers are refused."""
    allowed = ("must be a number >= 0" if allow_zero else "must be a number > 0") + (
        "" if allow_inf else " (finite)"
    )
    if not _is_real_number(value):
        raise ConfigError(setting, value, allowed)
    number = float(value)  # type: ignore[arg-type]
    ok = number >= 0 if allow_zero else number > 0
    if not ok or math.isnan(number) or (math.isinf(number) and not allow_inf):
        raise ConfigError(setting, value, allowed)
    return value  # type: ignore[return-value]


def check_int(setting: str, value: object, minimum: int | None = None, *, extra: str = "") -> int:
    """Return ``value`` as an int if it is an integer (Python or numpy, not a bool) >= ``minimum``.

    ``extra`` is appended to the message (what the setting means, what to do instead).
    """
    allowed = "must be an integer" + ("" if minimum is None else f" >= {minimum}") + extra
    if isinstance(value, bool | np.bool_):
        raise ConfigError(setting, value, allowed)
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError(setting, value, allowed) from None
    if minimum is not None and number < minimum:
        raise ConfigError(setting, value, allowed)
    return number


def check_in_range(setting: str, value: object, low: float, high: float, *, high_open: bool = True) -> float:
    """Return ``value`` if it is a number with low <= value < high (<= high when not ``high_open``)."""
    bracket = ")" if high_open else "]"
    allowed = f"must be a number in [{low}, {high}{bracket}"
    if not _is_real_number(value):
        raise ConfigError(setting, value, allowed)
    number = float(value)  # type: ignore[arg-type]
    ok = low <= number < high if high_open else low <= number <= high
    if not ok:
        raise ConfigError(setting, value, allowed)
    return value  # type: ignore[return-value]


def check_choice(setting: str, value: object, choices: tuple[object, ...]) -> object:
    """Return ``value`` if it is one of ``choices``, else raise ConfigError listing them."""
    if value not in choices:
        raise ConfigError(setting, value, "must be one of " + ", ".join(repr(c) for c in choices))
    return value
