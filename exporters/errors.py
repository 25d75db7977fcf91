"""Errors of the exporters (the reader's :class:`PackageError` is their base).

Every one of them means "this input or artifact cannot be used as it is", and
carries a message that names the file or the value at fault, so the command
line can print it as one line instead of a traceback.
"""

from __future__ import annotations

from edgetune.errors import SettingError
from edgetune_format.errors import PackageError

__all__ = ["ExportError", "ExportSettingError", "PackageError", "ParityError", "PlanMismatchError"]


class ExportError(PackageError):
    """A model and plan cannot be exported as they are (the plan is for another model, bad options...)."""


class ExportSettingError(ExportError, SettingError):
    """An :class:`~exporters.export.ExportOptions` setting out of range: an ExportError to the exporters' callers,
    a :class:`~edgetune.errors.SettingError` (which field, what it must be) to the command line."""

    def __init__(self, setting: str, requirement: str) -> None:
        SettingError.__init__(self, setting, requirement)


class PlanMismatchError(ExportError):
    """The plan was made for a different model than the one being exported."""


class ParityError(ExportError):
    """An exported ONNX graph does not reproduce the torch module it was exported from."""

    def __init__(self, message: str, max_abs_diff: float) -> None:
        super().__init__(message)
        self.max_abs_diff = max_abs_diff
