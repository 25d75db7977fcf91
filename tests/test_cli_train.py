import json

import pytest
from typer.testing import CliRunner

from edgetune_cli import app
from tests.conftest import synthetic_rows, write_csv

runner = CliRunner()


@pytest.fixture()
def planned(tiny_model_dir, train_csv, tmp_path):
    model = tiny_model_dir("bert", layers=4)
    plan_path = tmp_path / "plan.json"
    args = ["plan", "--model", str(model), "--data", str(train_csv), "--out", str(plan_path)]
    result = runner.invoke(app, [*args, "--planner", "topk", "--max-length", "16", "-q"])
    assert result.exit_code == 0, result.output
    return model, plan_path, train_csv


def _train(model, plan_path, data, out, *extra):
    args = ["train", "--model", str(model), "--plan", str(plan_path), "--data", str(data), "--out", str(out)]
    return runner.invoke(app, [*args, "--epochs", "2", "--lr", "1e-3", "--device", "cpu", *extra])


def test_train_and_evaluate_help():
    for command, flags in (
        ("train", ("--model", "--plan", "--data", "--out", "--mode", "--tuner", "--epochs", "--cache")),
        ("evaluate", ("--model", "--data", "--out")),
    ):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0
        for flag in flags:
            assert flag in result.output


def test_train_then_evaluate(planned, tmp_path):
    model, plan_path, train = planned
    test = write_csv(tmp_path / "test.csv", synthetic_rows(30, seed=1))
    out = tmp_path / "ckpt"
    result = _train(model, plan_path, train, out, "--tuner", "lora", "--lora-r", "4", "--eval-data", str(test))
    assert result.exit_code == 0, result.output
    assert "trained blocks 3..4 + head with lora" in result.output and "held-out accuracy" in result.output
    assert json.loads((out / "tuner.json").read_text()) == {
        "name": "lora",
        "params": {"r": 4, "alpha": 16.0, "dropout": 0.1, "target_modules": None, "layers": None},
    }
    trained = json.loads((out / "train.json").read_text())["metrics"]

    metrics_path = tmp_path / "metrics.json"
    result = runner.invoke(app, ["evaluate", "--model", str(out), "--data", str(test), "--out", str(metrics_path)])
    assert result.exit_code == 0, result.output
    assert "macro-F1" in result.output
    metrics = json.loads(metrics_path.read_text())
    assert metrics["accuracy"] == pytest.approx(trained["accuracy"])
    assert metrics["macro_f1"] == pytest.approx(trained["macro_f1"])


def test_user_errors_are_one_red_line(planned, tiny_model_dir, tmp_path):
    model, plan_path, train = planned
    out = tmp_path / "ckpt"
    cases = [
        (_train(model, tmp_path / "missing.json", train, out), "plan file not found"),
        (_train(tiny_model_dir("bert", layers=4, seed=1), plan_path, train, out), "other weights"),
        (_train(model, plan_path, tmp_path / "none.csv", out), "file not found"),
        (_train(model, plan_path, train, out, "--mode", "turbo"), "choose one of"),
        (_train(model, plan_path, train, out, "--lora-r", "4"), "need --tuner lora"),
        (_train(model, plan_path, train, out, "--epochs", "0"), "epochs"),
        (runner.invoke(app, ["evaluate", "--model", str(tmp_path), "--data", str(train)]), "not an edgetune"),
    ]
    for result, message in cases:
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
    assert not out.exists()

    assert _train(model, plan_path, train, out, "-q").exit_code == 0
    unknown = write_csv(tmp_path / "unknown.csv", [("apple", "alpha"), ("goal", "omega")])
    result = runner.invoke(app, ["evaluate", "--model", str(out), "--data", str(unknown)])
    assert result.exit_code == 2 and "row 3: label 'omega' was not seen" in result.output
    again = _train(model, plan_path, train, out, "-q")
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_a_trained_checkpoint_exports_with_the_plan_it_was_trained_from(planned, tmp_path):
    model, plan_path, train = planned
    out = tmp_path / "ckpt"
    assert _train(model, plan_path, train, out).exit_code == 0
    meta = json.loads((out / "edgetune.json").read_text())
    assert meta["base_model_hash"] == json.loads(plan_path.read_text())["model_hash"]
    pkg = tmp_path / "pkg"
    export = ["export", "--model", str(out), "--plan", str(plan_path), "--out", str(pkg), "--no-top-onnx"]
    result = runner.invoke(app, export)
    assert result.exit_code == 0, result.output
    assert (pkg / "manifest.json").exists()
