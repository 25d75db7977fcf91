"""Tables and formatting shared by CLI commands."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgetune.errors import SettingError, out_of_range
from edgetune.tables import plan_table

if TYPE_CHECKING:  # the device commands must not load the planner
    from edgetune.planner.plan import Plan


def print_plan_table(plan: Plan) -> None:
    from edgetune_cli import console

    console.print(plan_table(plan))


# -- numbers and outputs every command checks before any work ----------------------------------------------------

MAX_THREADS = 256  # onnxruntime aborts the whole process when asked for tens of thousands of threads


def check_range(
    flag: str,
    value: float | None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Refuse a numeric flag outside its range (``None``: the flag was not given) as a usage error (exit 2)."""
    if value is None:
        return
    requirement = out_of_range(value, low, high, low_open, high_open)
    if requirement is not None:
        raise typer.BadParameter(requirement, param_hint=flag)


def check_threads(value: int | None, flag: str = "--threads") -> None:
    check_range(flag, value, 1, MAX_THREADS)


def positive(**flags: float | None) -> None:
    """Each ``name=value`` (the flag ``--name``) must be > 0 when given."""
    for name, value in flags.items():
        check_range(f"--{name.replace('_', '-')}", value, 0, low_open=True)


def at_least_one(**flags: int | None) -> None:
    """Each ``name=value`` (the flag ``--name``) must be >= 1 when given."""
    for name, value in flags.items():
        check_range(f"--{name.replace('_', '-')}", value, 1)


@contextlib.contextmanager
def file_output(
    out: Path | None,
    inputs: list[tuple[str, Path | None]],
    owned: Callable[[Path], bool] | None,
    what: str,
) -> Iterator[None]:
    """A command's output file: never one of its inputs or a file it did not write; locked while it is written."""
    if out is None:
        yield
        return
    from edgetune.io import check_output_file, output_lock, recover

    check_output_file(out, inputs, owned, what)
    with output_lock(out):
        recover(out.parent, [out.name])
        check_output_file(out, inputs, owned, what)  # again, under the lock
        yield


@contextlib.contextmanager
def locked_output(out: Path | None) -> Iterator[None]:
    """Hold the lock on a command's output (a directory the command checks itself) while it is written."""
    if out is None:
        yield
        return
    from edgetune.io import output_lock, recover

    with output_lock(out):
        recover(out.parent, [out.name])
        yield


def locks_output(param: str = "out") -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorate a command so that it holds the lock on its ``--out`` (the ``param`` argument) while it runs."""

    def decorate(fn: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(fn)
        def wrapper(*args: object, **kwargs: object) -> None:
            out = kwargs.get(param)
            with locked_output(Path(out) if out is not None else None):  # type: ignore[arg-type]
                return fn(*args, **kwargs)

        return wrapper

    return decorate


def predictions_csv(path: Path) -> bool:
    """Whether ``path`` is a predictions CSV that ``edgetune predict --out`` wrote (its header)."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.readline().rstrip("\r\n") == "text,label,confidence"
    except (OSError, UnicodeDecodeError):
        return False


def png_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(8) == b"\x89PNG\r\n\x1a\n"
    except OSError:
        return False


# -- option types several commands share (one declaration, one help text) ----------------------------------------

RuntimeOption = Annotated[
    str,
    typer.Option(
        "--runtime",
        help="The top's runtime: torch; onnx (the package's top.onnx in onnxruntime alone, any personal state applied "
        "in numpy; never imports torch); auto (default): torch where it is installed, else onnx.",
    ),
]
# The old name of --runtime (predict, evaluate) and of --trainer (personalize): "backend" now means only the fleet's
# execution backend (simulate --backend local|ray, joblib's and Dask's word for it). Still read, with a warning.
LegacyBackendOption = Annotated[
    str | None, typer.Option("--backend", hidden=True, help="Deprecated: --runtime (predict, evaluate) or --trainer.")
]


def deprecated_alias(old_flag: str, old: str | None, new_flag: str, new: str, default: str) -> str:
    """The value of ``new_flag``, or of its deprecated spelling ``old_flag`` (with a one-line warning); both given
    with different values is a usage error."""
    if old is None:
        return new
    if new != default and new != old:
        raise typer.BadParameter(f"{old_flag} is the old name of {new_flag}: give one of them", param_hint=new_flag)
    from edgetune_cli import err_console

    err_console.print(f"[bold yellow]warning:[/] {old_flag} is deprecated here: use {new_flag} {old}", highlight=False)
    return old


PackageOption = Annotated[Path, typer.Option("--package", help="Device package (directory or .tar).")]
QuietTablesOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables.")]
QuietTableOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or table.")]
TextColumnOption = Annotated[str, typer.Option(help="Column holding the text.")]
LabelColumnOption = Annotated[str, typer.Option(help="Column holding the label.")]
MaxLengthOption = Annotated[int, typer.Option(help="Tokens per example (truncation).")]


def check_runtime(runtime: str) -> str:
    """Refuse a ``--runtime`` the device cannot run, before the package is opened."""
    from device_sim.device import RUNTIMES

    if runtime not in RUNTIMES:
        raise typer.BadParameter(f"choose one of {', '.join(RUNTIMES)}", param_hint="--runtime")
    return runtime


TrustOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--trust",
        help="Run only packages signed by this public key or trust store (repeatable; default: the file "
        "EDGETUNE_TRUST names, if set).",
    ),
]


@contextlib.contextmanager
def trusting(trust: list[Path] | None) -> Iterator[None]:
    """The command's packages are checked against ``--trust`` (or ``EDGETUNE_TRUST``) while it runs."""
    from edgetune_format.trust import trusting as use

    with use(trust):
        yield


def usage_error(err: SettingError, flags: Mapping[str, str] | None = None) -> typer.BadParameter:
    """A config's refusal of one setting as the usage error of its flag: ``--`` + the field's name with hyphens
    (``batch_size`` -> ``--batch-size``), or the flag ``flags`` maps the field to."""
    flag = (flags or {}).get(err.setting, f"--{err.setting.replace('_', '-')}")
    return typer.BadParameter(err.requirement, param_hint=flag.split("/")[0])
