"""Rich progress bars that turn themselves off in tests and pipes."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator


def progress_enabled(requested: bool = True) -> bool:
    if not requested or os.environ.get("EDGETUNE_NO_PROGRESS"):
        return False
    return sys.stderr.isatty() or bool(os.environ.get("EDGETUNE_FORCE_PROGRESS"))


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; shows a rich bar on a terminal, a no-op otherwise."""
    if not progress_enabled(enabled):
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
