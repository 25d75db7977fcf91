import json

import pytest
from typer.testing import CliRunner

from edgetune_cli import app
from tests.conftest import write_csv

runner = CliRunner()


def test_every_command_has_help():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "plan" in result.output
    result = runner.invoke(app, ["plan", "--help"])
    assert result.exit_code == 0
    for flag in ("--model", "--data", "--out", "--planner", "--max-backward-frac", "--max-train-memory-mb", "--report"):
        assert flag in result.output


def test_plan_writes_plan_and_report(tiny_model_dir, train_csv, tmp_path):
    out, png = tmp_path / "plan.json", tmp_path / "plan.png"
    result = runner.invoke(
        app,
        [
            "plan",
            "--model",
            str(tiny_model_dir("bert")),
            "--data",
            str(train_csv),
            "--out",
            str(out),
            "--report",
            str(png),
            "--sample-size",
            "60",
            "--max-length",
            "16",
        ],
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(out.read_text())
    assert plan["planner"] == "salf" and plan["schema_version"] == 1
    assert f"cut {plan['cut']}" in result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plan_with_budget_and_baseline(tiny_model_dir, train_csv, tmp_path):
    out = tmp_path / "plan.json"
    result = runner.invoke(
        app,
        [
            "plan",
            "--model",
            str(tiny_model_dir("bert")),
            "--data",
            str(train_csv),
            "--out",
            str(out),
            "--planner",
            "full",
            "--max-backward-frac",
            "0.5",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(out.read_text())
    assert plan["cut"] > 0 and plan["budget"]["max_backward_frac"] == 0.5


def test_bad_data_is_one_red_line_and_no_plan(tiny_model_dir, tmp_path):
    bad = write_csv(tmp_path / "bad.csv", [("apple", "alpha")], header=("body", "label"))
    out = tmp_path / "plan.json"
    result = runner.invoke(app, ["plan", "--model", str(tiny_model_dir("bert")), "--data", str(bad), "--out", str(out)])
    assert result.exit_code == 2
    assert "error:" in result.output and "missing column 'text'" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_wrong_model_path_and_bad_planner(train_csv, tmp_path):
    result = runner.invoke(
        app, ["plan", "--model", str(tmp_path / "nope"), "--data", str(train_csv), "--out", str(tmp_path / "p.json")]
    )
    assert result.exit_code == 2 and "error:" in result.output
    result = runner.invoke(
        app,
        [
            "plan",
            "--model",
            str(tmp_path),
            "--data",
            str(train_csv),
            "--out",
            str(tmp_path / "p.json"),
            "--planner",
            "magic",
        ],
    )
    assert result.exit_code == 2 and "choose one of" in result.output


def test_planner_choices_are_the_registry(monkeypatch):
    """`--planner` reads the registry's names (no torch); the registry loads each class and checks its name."""
    import edgetune.planner as planner_pkg
    from edgetune.planner_registry import PLANNER_CLASSES
    from edgetune_cli.plan_cmd import PLANNER_CHOICES

    assert PLANNER_CHOICES == tuple(planner_pkg.PLANNERS) == tuple(PLANNER_CLASSES)
    assert all(cls.name == name for name, cls in planner_pkg.PLANNERS.items())
    result = runner.invoke(app, ["plan", "--help"], terminal_width=200)
    assert ", ".join(PLANNER_CHOICES) in " ".join(result.output.split())
    monkeypatch.setattr(planner_pkg, "PLANNER_CLASSES", {"topk": "edgetune.planner.baselines:FullPlanner"})
    with pytest.raises(RuntimeError, match="is named 'full', registered as 'topk'"):
        planner_pkg._load_planners()
