"""Progress on stderr: a rich bar on a terminal, plain lines elsewhere (logs, pipes, CI), nothing when asked.

A job that runs for minutes without a terminal must still say that it is alive: without a TTY each bar prints
a line when it finishes and, for a long one, at each tenth of the way that comes at least
:data:`LINE_INTERVAL_S` seconds after the previous line. ``EDGETUNE_NO_PROGRESS=1`` (or ``-q`` on the
commands) turns both off; ``EDGETUNE_FORCE_PROGRESS=1`` draws the bar without a terminal.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator

# The least time between two plain progress lines of one bar (its last line is always printed).
LINE_INTERVAL_S = 10.0


def progress_enabled(requested: bool = True) -> bool:
    """Whether a rich bar is drawn (a terminal, or forced)."""
    return progress_mode(requested) == "bar"


def progress_mode(requested: bool = True) -> str | None:
    """``"bar"`` on a terminal (or ``EDGETUNE_FORCE_PROGRESS``), ``"lines"`` without one, ``None`` when off."""
    if not requested or os.environ.get("EDGETUNE_NO_PROGRESS"):
        return None
    return "bar" if sys.stderr.isatty() or os.environ.get("EDGETUNE_FORCE_PROGRESS") else "lines"


class _Lines:
    """``advance(n)`` for a pipe: a line at completion, and at each tenth when enough time has passed."""

    def __init__(self, description: str, total: int, interval: float) -> None:
        self.description, self.total, self.interval = description, max(int(total), 0), interval
        self.done = 0
        self.start = self.last = time.monotonic()
        self.tenth = 0
        self.closed = False  # its last line printed: a bar advanced past its total prints it only once

    def __call__(self, n: int = 1) -> None:
        if self.closed:
            return
        self.done += n
        now = time.monotonic()
        tenth = 10 * self.done // self.total if self.total else 10
        finished = self.total and self.done >= self.total
        if finished or (tenth > self.tenth and now - self.last >= self.interval):
            pct = min(100, 100 * self.done // self.total) if self.total else 100
            print(
                f"{self.description}: {self.done}/{self.total} ({pct}%) {now - self.start:.0f}s",
                file=sys.stderr,
                flush=True,
            )
            self.last = now
            self.closed = bool(finished)
        self.tenth = max(self.tenth, tenth)


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``: a rich bar on a terminal, plain lines without one, a no-op when disabled."""
    mode = progress_mode(enabled)
    if mode is None:
        yield lambda n=1: None
        return
    if mode == "lines":
        yield _Lines(description, total, LINE_INTERVAL_S)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
