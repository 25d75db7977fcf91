"""The options of `train`, `personalize`, `swap`, `simulate`, `skip`, `plan` and `export` are generated from their
config dataclasses (edgetune_cli.config_options): each has its field's help and default, and its value reaches the
config."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from edgetune.errors import EdgetuneError
from edgetune_cli import app
from edgetune_cli.config_options import ConfigOptions, field_info
from edgetune_cli.device_cmd import PERSONALIZE_SETTINGS
from edgetune_cli.export_cmd import EXPORT_SETTINGS
from edgetune_cli.plan_cmd import PLAN_SETTINGS
from edgetune_cli.skip_cmd import SKIP_SETTINGS
from edgetune_cli.swap_cmd import FLEET_SETTINGS, RETRAIN_SETTINGS
from edgetune_cli.train_cmd import TRAIN_SETTINGS

runner = CliRunner()
COMMANDS = [
    ("train", TRAIN_SETTINGS),
    ("personalize", PERSONALIZE_SETTINGS),
    ("swap", RETRAIN_SETTINGS),
    ("simulate", FLEET_SETTINGS),
    ("skip", SKIP_SETTINGS),
    ("plan", PLAN_SETTINGS),
    ("export", EXPORT_SETTINGS),
]


def options_of(command_name: str) -> dict[str, Any]:
    """{parameter name: click parameter} of a command, the generated options included."""
    command = typer.main.get_command(app).commands[command_name]
    return {p.name: p for p in command.get_params(typer.Context(command))}


@pytest.mark.parametrize(("command_name", "settings"), COMMANDS)
def test_every_exposed_field_has_its_help_and_its_default(command_name: str, settings: ConfigOptions) -> None:
    """A default changed in the dataclass is the command's default too; only a declared exception differs."""
    cls = settings.config_class()
    params = options_of(command_name)
    declared = {f.name: f for f in dataclasses.fields(cls)}
    assert set(settings.defaults) <= set(settings.fields)
    for name in settings.fields:
        param = params[name]
        assert param.help and param.help == field_info(cls, name, "help"), name
        default = declared[name].default
        expected = settings.defaults.get(name, default)
        assert param.default == expected, name
        assert param.opts == [f"--{name.replace('_', '-')}"], name  # today's flags are the fields' names
    assert TRAIN_SETTINGS.defaults == {"val_fraction": 0.1}  # the one deliberate difference (see train_cmd)


@pytest.mark.parametrize(
    "cls_path",
    [
        "edgetune.training_config:TrainConfig",
        "edgetune.training_config:HadSkipConfig",
        "device_sim.settings:PersonalizeConfig",
        "edgetune.plan_config:PlanConfig",
        "exporters.export:ExportOptions",
    ],
)
def test_every_config_field_has_a_help_text(cls_path: str) -> None:
    """Any field can become an option (the skip command's too) without writing its help a second time."""
    cls = ConfigOptions(cls_path, fields=()).config_class()
    assert [f.name for f in dataclasses.fields(cls) if not field_info(cls, f.name, "help")] == []


@pytest.mark.parametrize(
    ("command_name", "flag"),
    [
        ("train", "--mode"),
        ("train", "--cache"),
        ("personalize", "--cache"),
        ("plan", "--planner"),
        ("plan", "--policy"),
    ],
)
def test_a_value_outside_the_choices_is_a_usage_error(command_name: str, flag: str) -> None:
    result = runner.invoke(app, [command_name, flag, "turbo"])
    assert result.exit_code == 2 and "choose one of" in result.output and flag in result.output


def test_train_flags_reach_the_train_config(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import edgetune.finetune
    from edgetune.train import TrainConfig

    seen = {}

    def finetune(model, plan, data, out, config, **kwargs):
        seen["config"] = config
        raise EdgetuneError("stopped before training")

    monkeypatch.setattr(edgetune.finetune, "finetune", finetune)
    paths = ["--model", "m", "--plan", "p.json", "--data", "d.csv", "--out", str(tmp_path / "out")]
    result = runner.invoke(app, ["train", *paths, "--epochs", "5", "--head-lr", "0.01", "--mode", "naive", "-q"])
    assert result.exit_code == 2 and "stopped before training" in result.output, result.output
    assert seen["config"] == TrainConfig(epochs=5, head_lr=0.01, mode="naive", val_fraction=0.1, progress=False)


class FakeDevice:
    seen: dict[str, Any] = {}

    def __init__(self, *args: Any) -> None: ...

    def __enter__(self) -> FakeDevice:
        return self

    def __exit__(self, *exc: Any) -> None: ...

    def personalize(self, data, out, config, backend):
        FakeDevice.seen["config"] = config
        raise EdgetuneError("stopped before training")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], {}),  # every default, and the device selects between candidates
        (["--epochs", "5", "--head-lr", "0.01"], {"epochs": 5, "head_lr": 0.01, "select": False}),  # fixed by hand
        (["--lr", "1e-4", "--select"], {"lr": 1e-4}),  # a flag at its default still fixes the job; --select wins
        (
            ["--cut", "1", "--int8", "--cache", "mmap"],
            {"cut": 1, "precision": "int8", "cache": "mmap", "select": False},
        ),
    ],
)
def test_personalize_flags_reach_the_personalize_config(monkeypatch, tmp_path, flags, expected) -> None:
    import device_sim.device
    from device_sim.settings import PersonalizeConfig

    monkeypatch.setattr(device_sim.device, "Device", FakeDevice)
    paths = ["--package", str(tmp_path / "pkg"), "--data", str(tmp_path / "u.csv"), "--out", str(tmp_path / "out")]
    result = runner.invoke(app, ["personalize", *paths, *flags, "-q"])
    assert result.exit_code == 2 and "stopped before training" in result.output, result.output
    assert FakeDevice.seen["config"] == PersonalizeConfig(**{"progress": False, **expected})
