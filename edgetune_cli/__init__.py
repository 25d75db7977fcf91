"""The ``edgetune`` command line: one typer app, one module per command group.

Every command turns the errors a user can fix (bad data, wrong path, corrupt
package, budget that nothing fits) into one red line and exit code 2, instead
of a traceback. Set ``EDGETUNE_DEBUG=1`` to see the traceback anyway.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from edgetune.errors import EdgetuneError

# Below this many columns rich's option table squeezes the help into a sliver and cuts long option names
# (`--executorch-ma...`); click's plain layout wraps the help under whole names instead.
RICH_HELP_MIN_COLUMNS = 100


class _Typer(typer.Typer):
    """A typer app whose help layout follows the terminal's width, read when the command runs."""

    @property  # type: ignore[override]
    def rich_markup_mode(self) -> Any:
        return "rich" if shutil.get_terminal_size().columns >= RICH_HELP_MIN_COLUMNS else None

    @rich_markup_mode.setter
    def rich_markup_mode(self, value: Any) -> None:  # typer's constructor sets it; the width decides instead
        pass


app = _Typer(
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


@app.callback()
def _root(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Also show the warnings third-party libraries print on import."
    ),
) -> None:
    """Plan where to fine-tune a transformer, export a device package, personalize on the device, and simulate
    backbone swaps across a fleet."""
    from edgetune.quiet import quiet_third_party

    quiet_third_party(verbose or None)


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
        except typer.BadParameter as err:  # a flag the command's own checks refuse: one line, not a usage box
            err_console.print(f"[bold red]error:[/] {escape(err.format_message())}", highlight=False, soft_wrap=True)
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
