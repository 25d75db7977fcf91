"""Each setting is checked once, in its config dataclass (TrainingConfig and its family, ExportOptions); the command
line shows a refusal as the usage error of the setting's flag, before any file is read."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from edgetune.errors import EdgetuneError, SettingError, check_setting, out_of_range
from edgetune.training_config import HadSkipConfig, TrainConfig, TrainingConfig
from edgetune_cli import app

runner = CliRunner()


def test_out_of_range_says_what_the_value_must_be() -> None:
    assert out_of_range(0, 1) == "must be >= 1, got 0"
    assert out_of_range(1.5, 0, 1, high_open=True) == "must be >= 0 and < 1, got 1.5"
    assert out_of_range(0, 0, low_open=True) == "must be > 0, got 0"
    assert out_of_range(float("nan"), 0) == "must be >= 0, got nan"
    assert out_of_range(1, 1) is None and out_of_range(0.5, 0, 1, low_open=True) is None
    check_setting("epochs", None, 1)  # unset passes
    with pytest.raises(SettingError, match="^epochs must be >= 1, got 0$") as err:
        check_setting("epochs", 0, 1)
    assert (err.value.setting, err.value.requirement) == ("epochs", "must be >= 1, got 0")


@pytest.mark.parametrize(
    ("settings", "setting", "requirement"),
    [
        ({"epochs": 0}, "epochs", "must be >= 1, got 0"),
        ({"batch_size": 0}, "batch_size", "must be >= 1, got 0"),
        ({"lr": -1.0}, "lr", "must be > 0, got -1"),
        ({"head_lr": 0.0}, "head_lr", "must be > 0, got 0"),
        ({"val_fraction": 1.0}, "val_fraction", "must be >= 0 and < 1, got 1"),
        ({"patience": 0}, "patience", "must be >= 1, got 0"),
        ({"checkpoint_steps": 0}, "checkpoint_steps", "must be >= 1, got 0"),
        ({"cache_batch_size": 0}, "cache_batch_size", "must be >= 1, got 0"),
        ({"cache": "disk"}, "cache", "must be one of ('auto', 'memory', 'mmap'), got 'disk'"),
    ],
)
def test_training_config_names_the_setting_it_refuses(settings: dict, setting: str, requirement: str) -> None:
    for config in (TrainingConfig, TrainConfig):
        with pytest.raises(SettingError) as err:
            config(**settings)
        assert (err.value.setting, err.value.requirement) == (setting, requirement)
        assert str(err.value) == f"{setting} {requirement}"


def test_train_config_checks_its_own_settings() -> None:
    with pytest.raises(SettingError, match="^max_length must be >= 2 and <= 65536, got 1$"):
        TrainConfig(max_length=1)
    with pytest.raises(SettingError, match="^mode must be one of"):
        TrainConfig(mode="fast")
    with pytest.raises(SettingError, match=r"^budget must be > 0 and <= 1, got 1\.5$"):
        HadSkipConfig(budget=1.5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"val_fraction": 1.5}, "val_fraction must be >= 0 and < 1, got 1.5"),
        ({"atol": 0.0}, "atol must be > 0, got 0"),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"executorch_max_batch": 0}, "executorch_max_batch must be >= 1, got 0"),
        ({"executorch_train_batch": 1}, "executorch_train_batch must be >= 2, got 1"),
        ({"threads": 0}, "threads must be >= 1 and <= 256, got 0"),
        ({"skip_budget": 1.5}, "skip_budget must be > 0 and <= 1, got 1.5"),
        ({"release_version": -1}, "release_version must be >= 0, got -1"),
        ({"optimize": "max"}, "optimize must be one of none, fused, got 'max'"),
        ({"targets": ("onnx", "tflite")}, "targets must be among onnx, executorch: unknown target 'tflite'"),
        ({"targets": ("executorch",)}, "targets must include onnx, got executorch"),
    ],
)
def test_export_options_check_every_setting_once(options: dict, message: str) -> None:
    from exporters.errors import ExportError
    from exporters.export import ExportOptions

    with pytest.raises(ExportError) as err:
        ExportOptions(**options)
    assert str(err.value) == message
    assert isinstance(err.value, SettingError) and isinstance(err.value, EdgetuneError)


EXPORT = ["export", "--model", "{tmp}/no-model", "--plan", "{tmp}/no-plan.json", "--out", "{tmp}/pkg"]
PERSONALIZE = ["personalize", "--package", "{tmp}/no-pkg", "--data", "{tmp}/no.csv", "--out", "{tmp}/p"]
TRAIN = ["train", "--model", "{tmp}/no-model", "--plan", "{tmp}/no-plan.json", "--data", "{tmp}/no.csv"]
SKIP = ["skip", "--model", "{tmp}/no-model", "--data", "{tmp}/no.csv", "--out", "{tmp}/s"]
SWAP = ["swap", "--old", "{tmp}/a", "--new", "{tmp}/b", "--personal", "{tmp}/p", "--data", "{tmp}/no.csv"]
SIMULATE = ["simulate", "--old", "{tmp}/a", "--new", "{tmp}/b", "--data", "{tmp}/no.csv", "--out", "{tmp}/f"]


@pytest.mark.parametrize(
    ("args", "line"),
    [
        ([*EXPORT, "--val-fraction", "1.5"], "Invalid value for --val-fraction: must be >= 0 and < 1, got 1.5"),
        ([*EXPORT, "--atol", "0"], "Invalid value for --atol: must be > 0, got 0"),
        ([*EXPORT, "--optimize", "max"], "Invalid value for --optimize: must be one of none, fused, got 'max'"),
        (
            [*EXPORT, "--targets", "onnx,tflite"],
            "Invalid value for --targets: must be among onnx, executorch: unknown target 'tflite'",
        ),
        ([*EXPORT, "--skip-budget", "0"], "Invalid value for --skip-budget: must be > 0 and <= 1, got 0"),
        ([*EXPORT, "--threads", "0"], "Invalid value for --threads: must be >= 1 and <= 256, got 0"),
        ([*PERSONALIZE, "--epochs", "0"], "Invalid value for --epochs: must be >= 1, got 0"),
        ([*PERSONALIZE, "--lr", "-1"], "Invalid value for --lr: must be > 0, got -1"),
        ([*PERSONALIZE, "--checkpoint-steps", "0"], "Invalid value for --checkpoint-steps: must be >= 1, got 0"),
        (
            [*TRAIN, "--out", "{tmp}/t", "--max-length", "1"],
            "Invalid value for --max-length: must be >= 2 and <= 65536, got 1",
        ),
        ([*TRAIN, "--out", "{tmp}/t", "--patience", "0"], "Invalid value for --patience: must be >= 1, got 0"),
        ([*SKIP, "--budget", "2"], "Invalid value for --budget: must be > 0 and <= 1, got 2"),
        ([*SKIP, "--epochs", "0"], "Invalid value for --epochs: must be >= 1, got 0"),
        ([*SWAP, "--out", "{tmp}/q", "--epochs", "0"], "Invalid value for --epochs: must be >= 1, got 0"),
        ([*SIMULATE, "--epochs", "0"], "Invalid value for --epochs: must be >= 1, got 0"),
    ],
)
def test_the_command_line_shows_a_refused_setting_under_its_flag(tmp_path, args: list[str], line: str) -> None:
    result = runner.invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {line}"]
    assert list(tmp_path.iterdir()) == []
