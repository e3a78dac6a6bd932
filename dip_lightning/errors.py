"""Errors a user can act on: each names the setting or file at fault and what is allowed."""

from __future__ import annotations


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

    ``setting`` is the setting that named the file (``data.path``, ``operator.mask_path``) when
    known; :meth:`for_setting` adds it where the caller knows it and the reader did not.
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


def check_positive(setting: str, value: float, *, allow_zero: bool = False) -> float:
    """Return ``value`` if it is positive (or zero when allowed), else raise ConfigError."""
    ok = value >= 0 if allow_zero else value > 0
    if not ok or value != value:  # NaN fails both comparisons
        raise ConfigError(setting, value, "must be >= 0" if allow_zero else "must be > 0")
    return value


def check_in_range(setting: str, value: float, low: float, high: float, *, high_open: bool = True) -> float:
    """Return ``value`` if low <= value < high (or <= high when ``high_open`` is False)."""
    ok = low <= value < high if high_open else low <= value <= high
    if not ok:
        bracket = ")" if high_open else "]"
        raise ConfigError(setting, value, f"must lie in [{low}, {high}{bracket}")
    return value


def check_choice(setting: str, value: object, choices: tuple[object, ...]) -> object:
    """Return ``value`` if it is one of ``choices``, else raise ConfigError listing them."""
    if value not in choices:
        raise ConfigError(setting, value, "must be one of " + ", ".join(repr(c) for c in choices))
    return value
