"""``--report-to`` and ``--logging-dir``: the training commands' logs for TensorBoard (transformers' flag names)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

ReportToOption = Annotated[
    str,
    typer.Option(
        "--report-to",
        help="Also log the training curves: none, or tensorboard (event files in --logging-dir; needs the "
        "tensorboard package). The progress bar is unchanged.",
    ),
]
LoggingDirOption = Annotated[
    Path | None,
    typer.Option(
        "--logging-dir", help="Where --report-to writes its logs (default: runs/<name of --out> beside --out)."
    ),  # fmt: skip
]


@contextlib.contextmanager
def reporting(report_to: str, logging_dir: Path | None, out: Path, main_process: bool = True) -> Iterator[list[Any]]:
    """The training callbacks ``--report-to`` asks for, closed when the command ends; in a distributed launch only
    the main process writes logs."""
    from edgetune.report_to import REPORT_TO, default_log_dir, report_callbacks

    if report_to not in REPORT_TO:
        raise typer.BadParameter(f"choose one of {', '.join(REPORT_TO)}, got {report_to!r}", param_hint="--report-to")
    callbacks = report_callbacks(report_to, logging_dir or default_log_dir(out)) if main_process else []
    try:
        yield callbacks
    finally:
        for callback in callbacks:
            callback.close()
