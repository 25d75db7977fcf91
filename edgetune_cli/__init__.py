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

from edgetune.errors import EdgetuneError, SettingError

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


def os_error_line(err: OSError) -> str:
    """An operating-system error (disk full, permission, read-only file system) as one line naming the path."""
    where = err.filename if err.filename is not None else "?"
    if err.filename2 is not None:
        where = f"{where} -> {err.filename2}"
    return f"{where}: {err.strerror or err}"


def interrupted(signum: int) -> typer.Exit:
    """One line on stderr, and the shell's exit code for death by that signal (130 for SIGINT, 143 for SIGTERM):
    whatever the command was writing was not published, and its temporary files were removed on the way out."""
    import signal

    name = signal.Signals(signum).name if signum else "SIGINT"
    err_console.print(f"interrupted ({name}); nothing was written", highlight=False)
    return typer.Exit(code=128 + (signum or signal.SIGINT))


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from edgetune.io import Interrupted, stop_requested

        try:
            result = fn(*args, **kwargs)
        except SettingError as err:  # a config's check of a setting: shown under the setting's flag
            if os.environ.get("EDGETUNE_DEBUG"):
                raise
            from edgetune_cli.common import usage_error

            usage = usage_error(err).format_message()
            err_console.print(f"[bold red]error:[/] {escape(usage)}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None
        except user_errors() as err:
            if os.environ.get("EDGETUNE_DEBUG"):
                raise
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None
        except typer.BadParameter as err:  # a flag the command's own checks refuse: one line, not a usage box
            err_console.print(f"[bold red]error:[/] {escape(err.format_message())}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None
        except Interrupted as err:
            raise interrupted(err.signum) from None
        except OSError as err:
            if os.environ.get("EDGETUNE_DEBUG"):
                raise
            err_console.print(f"[bold red]error:[/] {os_error_line(err)}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None
        if stop_requested():  # an interrupt Python swallowed (raised inside a __del__) still ends the run as one
            raise interrupted(stop_requested())
        return result

    return wrapper


def _on_signal(signum: int, _frame: Any) -> None:
    from edgetune.io import Interrupted, request_stop

    request_stop(signum)  # checked again before every final rename, in case this exception is swallowed
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM unwind the command like Ctrl-C does (temporary directories are removed on the way)."""
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _on_signal)


def _register() -> None:
    from edgetune_cli import (
        datasets_cmd,
        device_cmd,
        export_cmd,
        hf_cmd,
        merge_cmd,
        plan_cmd,
        skip_cmd,
        swap_cmd,
        train_cmd,
        trust_cmd,
    )

    for module in (plan_cmd, train_cmd, export_cmd, hf_cmd, device_cmd, swap_cmd, skip_cmd, merge_cmd, datasets_cmd):
        module.register(app)
    trust_cmd.register(app)


_register()


def main() -> None:
    install_signal_handlers()
    app(prog_name="edgetune")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
