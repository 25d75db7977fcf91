"""The ``edgetune`` command line: one typer app, one module per command group.

Every command turns the errors a user can fix (bad data, wrong path, corrupt
package, budget that nothing fits) into one red line and exit code 2, instead
of a traceback. Set ``EDGETUNE_DEBUG=1`` to see the traceback anyway.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from edgetune.errors import EdgetuneError

app = typer.Typer(
    name="edgetune",
    help=(
        "Plan where to fine-tune a transformer, export a device package, personalize on the device, "
        "and simulate backbone swaps across a fleet."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Pipes and CI logs get a fixed width so tables are not squeezed to 80 columns.
console = Console() if sys.stdout.isatty() else Console(width=120)
err_console = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=200)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the input is wrong", reported without a traceback.

    Every module's own error derives from :class:`EdgetuneError`, so this imports no command's dependencies.
    """
    return (EdgetuneError, FileNotFoundError)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except user_errors() as err:
            if os.environ.get("EDGETUNE_DEBUG"):
                raise
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper


def _register() -> None:
    from edgetune_cli import datasets_cmd, device_cmd, export_cmd, merge_cmd, plan_cmd, skip_cmd, swap_cmd, train_cmd

    for module in (plan_cmd, train_cmd, export_cmd, device_cmd, swap_cmd, skip_cmd, merge_cmd, datasets_cmd):
        module.register(app)


_register()


def main() -> None:
    app(prog_name="edgetune")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
