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
