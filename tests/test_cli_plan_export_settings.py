"""`plan` and `export` take their settings as options generated from PlanConfig and ExportOptions: a representative
command line reaches the planner and the exporter as the hand-declared options passed it, a refused setting is one
red line under its flag, and the switches stay switches."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from edgetune.errors import EdgetuneError
from edgetune_cli import app
from tests.conftest import synthetic_rows, write_csv

runner = CliRunner()


@pytest.fixture
def planned(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[list[str], dict[str, Any]]:
    """The start of a `plan` command line whose model loads as a stub and whose planning stops at the call to
    edgetune.api.plan, recording its arguments."""
    import edgetune.api

    seen: dict[str, Any] = {}

    def load_model(model: Any, max_length: int) -> tuple[Any, Any]:
        seen["max_length"] = max_length
        return object(), SimpleNamespace(max_length=max_length)

    def plan(model: Any, data: Any, **kwargs: Any) -> None:
        seen.update(kwargs)
        raise EdgetuneError("stopped before planning")

    monkeypatch.setattr(edgetune.api, "load_model", load_model)
    monkeypatch.setattr(edgetune.api, "plan", plan)
    data = write_csv(tmp_path / "train.csv", synthetic_rows(30))
    return ["plan", "--model", str(tmp_path / "model"), "--data", str(data), "--out", str(tmp_path / "p.json")], seen


def test_plan_flags_reach_the_planner(planned) -> None:
    from edgetune.planner import Budget, CostConfig

    args, seen = planned
    flags = [
        "--sample-size", "60", "--policy", "argmax-gain", "--tolerance", "0.5", "--min-trainable-layers", "2",
        "--max-backward-frac", "0.5", "--max-train-memory-mb", "100", "--max-device-seconds", "30",
        "--device-gflops", "5", "--epochs", "2", "--batch-size", "8", "--seed", "3", "--max-length", "16",
        "--tuner", "lora", "--text-column", "text", "--label-column", "label", "-q",
    ]  # fmt: skip
    result = runner.invoke(app, [*args, *flags])
    assert result.exit_code == 2 and "stopped before planning" in result.output, result.output
    assert seen == {
        "max_length": 16,
        "planner": "salf",
        "planner_params": {"sample_size": 60, "min_trainable_layers": 2, "policy": "argmax-gain", "tolerance": 0.5},
        "budget": Budget(max_backward_frac=0.5, max_train_memory_mb=100.0, max_device_seconds=30.0),
        "cost": CostConfig(seq_len=16, batch_size=8, num_examples=30, epochs=2, device_gflops=5.0),
        "seed": 3,
        "progress": False,
        "tuner": "lora",
        "tuner_params": None,
        "text_column": "text",
        "label_column": "label",
    }


@pytest.mark.parametrize(
    ("flags", "planner", "params"),
    [
        ([], "salf", {"sample_size": 256, "min_trainable_layers": None, "policy": "cheapest", "tolerance": 1.0}),
        (["--planner", "topk", "--k", "3", "--sample-size", "9"], "topk", {"k": 3}),
        (["--planner", "random"], "random", {"min_trainable_layers": 1}),
        (["--planner", "random", "--min-trainable-layers", "0"], "random", {"min_trainable_layers": 0}),
        (["--planner", "full", "--k", "5"], "full", {}),
    ],
)
def test_the_planner_reads_only_its_own_settings(planned, flags: list[str], planner: str, params: dict) -> None:
    args, seen = planned
    result = runner.invoke(app, [*args, *flags, "-q"])
    assert result.exit_code == 2 and "stopped before planning" in result.output, result.output
    assert seen["planner"] == planner and seen["planner_params"] == params
    assert seen["cost"].batch_size == 16 and seen["cost"].epochs == 3 and seen["cost"].device_gflops == 20.0
    assert seen["max_length"] == 128 and seen["seed"] == 0 and seen["tuner"] == "full"


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--max-length", "1"], "Invalid value for --max-length: must be >= 2 and <= 65536, got 1"),
        (["--max-backward-frac", "2"], "Invalid value for --max-backward-frac: must be > 0 and <= 1, got 2"),
        (["--tolerance", "-1"], "Invalid value for --tolerance: must be >= 0, got -1"),
        (["--sample-size", "3"], "Invalid value for --sample-size: must be >= 4, got 3"),  # SALF's leave-one-out
        (["--k", "0"], "Invalid value for --k: must be >= 1, got 0"),
        (["--min-trainable-layers", "-1"], "Invalid value for --min-trainable-layers: must be >= 0, got -1"),
        (["--max-train-memory-mb", "0"], "Invalid value for --max-train-memory-mb: must be > 0, got 0"),
        (["--device-gflops", "-5"], "Invalid value for --device-gflops: must be > 0, got -5"),
    ],
)
def test_plan_shows_a_refused_setting_under_its_flag(tmp_path: Path, flags: list[str], line: str) -> None:
    paths = ["--model", str(tmp_path / "m"), "--data", str(tmp_path / "d.csv"), "--out", str(tmp_path / "p.json")]
    result = runner.invoke(app, ["plan", *paths, *flags])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {line}"]
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[list[str], dict[str, Any]]:
    """The start of an `export` command line whose export stops at the call to export_package, recording it."""
    import exporters.export

    seen: dict[str, Any] = {}

    def export_package(model, plan, out, data, val_data, options, **kwargs):
        seen.update(model=model, plan=plan, out=out, data=data, val_data=val_data, options=options)
        raise EdgetuneError("stopped before exporting")

    monkeypatch.setattr(exporters.export, "export_package", export_package)
    return ["export", "--model", "m", "--plan", "p.json", "--out", str(tmp_path / "pkg")], seen


def test_export_flags_reach_the_export_options(exported) -> None:
    from exporters.export import ExportOptions
    from exporters.options import Int8Config

    args, seen = exported
    flags = [
        "--int8", "--optimize", "fused", "--no-top-onnx", "--target", "executorch", "--executorch-max-batch", "4",
        "--tar", "--data", "d.csv", "--val-data", "v.csv", "--val-fraction", "0.3", "--text-column", "t",
        "--label-column", "l", "--opset", "17", "--atol", "1e-3", "--no-per-channel", "--reduce-range",
        "--threads", "2", "--batch-size", "8", "--seed", "5", "--skip-budget", "0.5", "--sign", "key.pem",
        "--release", "news", "--release-version", "3", "-q",
    ]  # fmt: skip
    result = runner.invoke(app, [*args, *flags])
    assert result.exit_code == 2 and "stopped before exporting" in result.output, result.output
    assert (seen["data"], seen["val_data"]) == (Path("d.csv"), Path("v.csv"))
    assert seen["options"] == ExportOptions(
        int8=True,
        optimize="fused",
        int8_config=Int8Config(per_channel=False, reduce_range=True),
        top_onnx=False,
        tar=True,
        opset=17,
        atol=1e-3,
        threads=2,
        batch_size=8,
        val_fraction=0.3,
        seed=5,
        text_column="t",
        label_column="l",
        skip_budget=0.5,
        targets=("onnx", "executorch"),
        executorch_max_batch=4,
        sign=Path("key.pem"),
        release="news",
        release_version=3,
    )


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], {}),  # every default: the exporter's
        (["--release", "news"], {"release": "news", "release_version": 1}),  # a named release starts at 1
        (["--release-version", "4"], {}),  # a version without a release is not recorded
        (["--targets", "executorch,onnx", "--targets", "executorch"], {"targets": ("onnx", "executorch")}),
    ],
)
def test_export_defaults_are_the_export_options(exported, flags: list[str], expected: dict) -> None:
    from exporters.export import ExportOptions

    args, seen = exported
    result = runner.invoke(app, [*args, *flags])
    assert result.exit_code == 2 and "stopped before exporting" in result.output, result.output
    assert seen["options"] == ExportOptions(**expected)


@pytest.mark.parametrize("flag", ["--no-int8", "--no-tar"])
def test_export_switches_have_no_negative_form(exported, flag: str) -> None:
    args, _ = exported
    result = runner.invoke(app, [*args, flag])
    assert result.exit_code == 2 and "No such option" in result.output


@pytest.mark.parametrize("command", ["plan", "export"])
def test_help_loads_no_torch(command: str) -> None:
    """The options of `plan` and `export` come from the torch-free PlanConfig and ExportOptions
    (exporters.options): their help needs neither the planner nor the export machinery."""
    import subprocess
    import sys

    code = (
        "import sys; from typer.testing import CliRunner; from edgetune_cli import app; "
        f"r = CliRunner().invoke(app, [{command!r}, '--help']); print(r.exit_code, 'torch' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert run.stdout.split() == ["0", "False"], run.stderr[-2000:]
