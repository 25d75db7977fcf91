"""The root of every error a user can fix by changing an input: bad data, a wrong path or flag, a plan for
another model, a corrupt package, a budget that nothing fits.

Each module keeps its own error class (``DataError``, ``PlanError``, ``PackageError``...) and derives it from
:class:`EdgetuneError` as well as from the built-in it behaves like (``ValueError``...). The command line
catches this one class and prints the message as one line: it needs no list of every module's errors, and so
no import of modules (torch, the planner) that a command does not otherwise load.
"""

from __future__ import annotations


class EdgetuneError(Exception):
    """An input or artifact that cannot be used as it is; the message names the file or value at fault."""


class SettingError(ValueError):
    """A setting of a config dataclass outside what it accepts, raised by the dataclass's ``__post_init__`` (the
    one place each setting is checked). ``setting`` is the field's name and ``requirement`` what it must be
    ("must be >= 1, got 0"); the command line shows the requirement under the field's flag (``--epochs``)."""

    def __init__(self, setting: str, requirement: str) -> None:
        super().__init__(f"{setting} {requirement}")
        self.setting = setting
        self.requirement = requirement


def out_of_range(
    value: float, low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False
) -> str | None:
    """What ``value`` must be when it lies outside its range ("must be >= 1, got 0"), or None when inside it.
    NaN is never inside."""
    ok = (low is None or (value > low if low_open else value >= low)) and (
        high is None or (value < high if high_open else value <= high)
    )
    if ok and value == value:
        return None
    left = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
    right = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
    return f"must be {' and '.join(p for p in (left, right) if p)}, got {value:g}"


def check_setting(
    setting: str,
    value: float | None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    error: type[SettingError] = SettingError,
) -> None:
    """Refuse a numeric setting outside its range as ``error(setting, "must be ..., got ...")``; None (a setting
    left unset) passes."""
    if value is None:
        return
    requirement = out_of_range(value, low, high, low_open, high_open)
    if requirement is not None:
        raise error(setting, requirement)
