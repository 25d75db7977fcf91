"""The package format's error: a package (or a personal state) that cannot be read or written as it is.

It carries a message naming the file or the value at fault, so the command
line prints it as one line instead of a traceback. The exporter's errors
(``exporters.errors``) derive from it: a package that cannot be *written* is
the same kind of failure seen from the other side.
"""

from __future__ import annotations

from edgetune.errors import EdgetuneError


class PackageError(EdgetuneError):
    """A device package cannot be written or read: missing, truncated, tampered, wrong version."""


def one_line(err: BaseException, limit: int = 300) -> str:
    """A library's exception as one short line: its type and the first line of its message."""
    text = str(err).strip().splitlines()
    first = text[0].strip() if text else ""
    if len(first) > limit:
        first = first[: limit - 3] + "..."
    return f"{type(err).__name__}: {first}" if first else type(err).__name__
