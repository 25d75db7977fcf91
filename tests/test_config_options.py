"""edgetune_cli.config_options on a small dataclass: flags, types, choices, defaults and help from the fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from edgetune_cli.config_options import ConfigOptions

runner = CliRunner()


@dataclass
class Tiny:
    rate: float | None = field(default=None, metadata={"help": "A rate (default: a rule)."})
    place: str = field(default="a", metadata={"help": "Where.", "choices": ("a", "b")})
    loud: bool = field(default=True, metadata={"help": "Speak."})
    old_name: int = field(default=3, metadata={"help": "A count."})
    silent: int = 0  # no help: cannot be an option

    def __post_init__(self) -> None:
        if self.place not in ("a", "b"):
            raise ValueError("place")


@dataclass
class TinyChild(Tiny):
    old_name: int = 4  # re-stated default: keeps the base's help


TINY = ConfigOptions(f"{__name__}:TinyChild", fields=("rate", "place", "loud", "old_name"), flags={"old_name": "--n"})


def tiny_app() -> typer.Typer:
    tiny = typer.Typer(add_completion=False)

    @tiny.command("run", cls=TINY.command_class())
    def run(ctx: typer.Context, tag: Annotated[str, typer.Option()] = "t") -> None:
        typer.echo(f"{tag} {TINY.build(ctx)!r} {sorted(TINY.given(ctx))}")

    @tiny.command("other")
    def other() -> None: ...

    return tiny


def test_the_options_of_a_dataclass() -> None:
    tiny = tiny_app()
    result = runner.invoke(tiny, ["run", "--rate", "0.5", "--no-loud", "--n", "7", "--tag", "x"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"x {TinyChild(rate=0.5, loud=False, old_name=7)!r} ['loud', 'old_name', 'rate']"
    result = runner.invoke(tiny, ["run"])
    assert result.output.strip() == f"t {TinyChild()!r} []"
    result = runner.invoke(tiny, ["run", "--help"], env={"COLUMNS": "200"})
    for text in (
        "--rate",
        "A rate (default: a rule).",
        "[a|b]",
        "--loud",
        "--no-loud",
        "--n",
        "A count.",
        "[default: 4]",
    ):
        assert text in result.output, text
    assert "Training settings" in result.output
    result = runner.invoke(tiny, ["run", "--place", "c"])
    assert result.exit_code == 2 and "choose one of a, b" in result.output


def test_a_field_without_help_or_of_another_type_has_no_option() -> None:
    with pytest.raises(TypeError, match="metadata"):
        ConfigOptions(f"{__name__}:Tiny", fields=("silent",)).click_params()
    with pytest.raises(TypeError, match="no command-line option"):
        ConfigOptions("device_sim.settings:PersonalizeConfig", fields=("candidates",)).click_params()


@dataclass
class Packed:
    key: Path | None = field(default=None, metadata={"help": "A key file."})
    fast: bool = field(default=False, metadata={"help": "Go fast."})
    loud: bool = field(default=False, metadata={"help": "Speak."})


PACKED = ConfigOptions(f"{__name__}:Packed", fields=("key", "fast", "loud"), flags={"fast": "--fast"})


def test_a_path_field_and_a_switch() -> None:
    """A Path field is a path option; a bool given one flag is a switch without a --no- form, the others get both."""
    packed = typer.Typer(add_completion=False)

    @packed.command("run", cls=PACKED.command_class())
    def run(ctx: typer.Context) -> None:
        typer.echo(repr(PACKED.build(ctx)))

    @packed.command("other")
    def other() -> None: ...

    result = runner.invoke(packed, ["run", "--key", "k.pem", "--fast", "--loud"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == repr(Packed(key=Path("k.pem"), fast=True, loud=True))
    assert runner.invoke(packed, ["run", "--no-loud"]).exit_code == 0
    result = runner.invoke(packed, ["run", "--no-fast"])
    assert result.exit_code == 2 and "No such option" in result.output
