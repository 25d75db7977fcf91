"""Command-line options generated from a config dataclass: its fields are the one declaration of each setting.

A field's option takes its flag from the field's name (``head_lr`` -> ``--head-lr``), its type from the annotation
(int, float, str, bool or Path, each optionally ``| None``), its default from the dataclass and its help from the
field's ``metadata["help"]``; ``metadata["choices"]`` (the tuple ``__post_init__`` checks against) makes it a choice.
A re-stated field without metadata of its own (a subclass that only changes a default) keeps its base's.

A command lists the fields it exposes in a :class:`ConfigOptions` and declares only its other options by hand::

    TRAIN = ConfigOptions("edgetune.training_config:TrainConfig", fields=("epochs", "head_lr"))

    @app.command("train", cls=TRAIN.command_class())
    def train_command(ctx: typer.Context, out: Annotated[Path, typer.Option()]) -> None:
        config = TRAIN.build(ctx, progress=True)

The config class is named by its import path and imported only when the command runs or shows its help, so a
config that lives beside torch code costs nothing at start-up. The options appear in their own ``--help`` panel.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.main
from typer.core import TyperCommand

SCALARS = (int, float, str, bool, Path)


def one_of(choices: Sequence[str]) -> Any:
    """An option callback that refuses a value outside ``choices`` the way the project's other options do."""

    def check(value: str | None) -> str | None:
        if value is not None and value not in choices:
            raise typer.BadParameter(f"choose one of {', '.join(choices)}")
        return value

    return check


def field_info(cls: type, name: str, key: str) -> Any:
    """``metadata[key]`` of field ``name``, from the nearest class of ``cls``'s MRO whose declaration has it."""
    for klass in cls.__mro__:
        declared = getattr(klass, "__dataclass_fields__", {}).get(name)
        if declared is not None and key in declared.metadata:
            return declared.metadata[key]
    return None


def field_default(cls: type, name: str) -> Any:
    declared = cls.__dataclass_fields__[name]
    if declared.default_factory is not dataclasses.MISSING:
        return declared.default_factory()
    return declared.default


def scalar_type(annotation: Any) -> type:
    """int, float, str, bool or Path, from ``X`` or ``X | None``; any other annotation has no option."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        annotation = rest[0] if len(rest) == 1 else annotation
    if annotation not in SCALARS:
        raise TypeError(
            f"{annotation!r} has no command-line option (int, float, str, bool or Path, or one of them | None)"
        )
    return annotation


@dataclass(frozen=True)
class ConfigOptions:
    """The fields of one config class that a command exposes as options."""

    config: str  # "module:Class"
    fields: Sequence[str]
    # field -> the command's flag where it differs from the field's name: "--old-name"; for a bool "--x/--no-x", or
    # "--x" alone for a switch that has no "--no-x" (a bool without an entry gets "--name/--no-name")
    flags: Mapping[str, str] = field(default_factory=dict)
    # field -> the command's own default where it deliberately differs from the dataclass's (say why beside it)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    panel: str = "Training settings"

    def config_class(self) -> type:
        module, _, name = self.config.partition(":")
        return getattr(importlib.import_module(module), name)

    def default(self, name: str) -> Any:
        """The option's default: the command's own where it has one, else the dataclass's."""
        return self.defaults[name] if name in self.defaults else field_default(self.config_class(), name)

    def signature(self) -> inspect.Signature:
        """The options as typer reads a command's parameters: ``name: Annotated[type, typer.Option(...)] = default``."""
        cls = self.config_class()
        hints = typing.get_type_hints(cls)
        parameters = []
        for name in self.fields:
            help_text = field_info(cls, name, "help")
            if not help_text:
                raise TypeError(f"{cls.__name__}.{name} has no metadata['help'] to show as its option's help")
            choices = field_info(cls, name, "choices")
            flag = self.flags.get(name, f"--{name.replace('_', '-')}")
            if scalar_type(hints[name]) is bool and name not in self.flags:
                flag = f"{flag}/--no-{flag.removeprefix('--')}"
            option = typer.Option(
                flag,
                help=help_text,
                rich_help_panel=self.panel,
                show_default=True,
                callback=one_of(choices) if choices else None,
                metavar=f"[{'|'.join(choices)}]" if choices else None,
            )
            annotation = Annotated[hints[name], option]
            parameters.append(
                inspect.Parameter(
                    name, inspect.Parameter.KEYWORD_ONLY, default=self.default(name), annotation=annotation
                )
            )
        return inspect.Signature(parameters)

    def click_params(self) -> list[Any]:
        """The options, built by typer itself (same types, help layout and panels as hand-declared ones)."""

        def options(**values: Any) -> None: ...

        options.__signature__ = self.signature()  # type: ignore[attr-defined]
        options.__annotations__ = {}  # the signature's annotations are the ones typer reads
        probe = typer.Typer(add_completion=False)
        probe.command()(options)
        return list(typer.main.get_command(probe).params)

    def command_class(self) -> type[ConfigCommand]:
        """The class to pass as ``@app.command(..., cls=...)``: a typer command that also takes these options."""
        return type(f"{self.config.rpartition(':')[2]}Command", (ConfigCommand,), {"options": self})

    # -- in the command's body ------------------------------------------------------------------------------------

    def values(self, ctx: typer.Context) -> dict[str, Any]:
        """The parsed value of every exposed field."""
        return dict(ctx.meta[self.config])

    def given(self, ctx: typer.Context) -> set[str]:
        """The exposed fields set on the command line (or from the environment), not left at their defaults."""
        return {n for n in self.fields if getattr(ctx.get_parameter_source(n), "name", "DEFAULT") != "DEFAULT"}

    def build(self, ctx: typer.Context, **settings: Any) -> Any:
        """The config from the parsed values and the command's other ``settings``. Where the config's
        ``__post_init__`` refuses an exposed field (a :class:`~edgetune.errors.SettingError`), the usage error of
        its flag ("Invalid value for --epochs: must be >= 1, got 0"); any other refusal stays a ``ValueError``."""
        from edgetune.errors import SettingError
        from edgetune_cli.common import usage_error

        try:
            return self.config_class()(**{**self.values(ctx), **settings})
        except SettingError as err:
            if err.setting in self.fields and err.setting not in settings:
                raise usage_error(err, self.flags) from None
            raise


class ConfigCommand(TyperCommand):
    """A typer command that adds the options of ``options`` to its own the first time it needs its parameters
    (to parse a command line or show its help) and hands their values to the body in ``ctx.meta``, not as
    arguments (read them with ``options.values(ctx)`` or ``options.build(ctx, ...)``)."""

    options: ConfigOptions
    _options_added = False

    def get_params(self, ctx: typer.Context) -> list[Any]:
        if not self._options_added:
            self.params.extend(self.options.click_params())
            self._options_added = True
        return super().get_params(ctx)

    def invoke(self, ctx: typer.Context) -> Any:
        ctx.meta[self.options.config] = {name: ctx.params.pop(name) for name in self.options.fields}
        return super().invoke(ctx)
