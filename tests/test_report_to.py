"""`--report-to tensorboard` on `edgetune train` and `edgetune skip`: event files that TensorBoard reads back,
one loss per optimizer step and each epoch's figures; a clear error without the tensorboard package."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgetune_cli import app

pytest.importorskip("tensorboard")  # the dev extra installs it: CI runs these tests
runner = CliRunner()


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar curve in the event files under ``log_dir``, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list(log_dir.glob("events.out.tfevents.*"))
    assert files, f"no event file in {log_dir}"
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture()
def planned(tiny_model_dir, train_csv, tmp_path):
    model = tiny_model_dir("bert", layers=4)
    plan = tmp_path / "plan.json"
    args = ["plan", "--model", str(model), "--data", str(train_csv), "--out", str(plan), "--planner", "topk"]
    result = runner.invoke(app, [*args, "--max-length", "16", "-q"])
    assert result.exit_code == 0, result.output
    return model, plan, train_csv


def test_train_writes_tensorboard_events(planned, tmp_path):
    model, plan, data = planned
    out = tmp_path / "ckpt"
    args = ["train", "--model", str(model), "--plan", str(plan), "--data", str(data), "--out", str(out)]
    result = runner.invoke(app, [*args, "--epochs", "2", "--lr", "1e-3", "--batch-size", "16", "-q",
                                 "--report-to", "tensorboard"])  # fmt: skip
    assert result.exit_code == 0, result.output
    curves = scalars(tmp_path / "runs" / "ckpt")  # the default: runs/<name of --out> beside --out
    losses = curves["train/loss"]
    # 90 rows, a tenth held out for validation: 81 at batch 16 = 6 steps per epoch, 2 epochs
    assert [step for step, _ in losses] == list(range(1, 13))
    assert all(0 < loss < 10 for _, loss in losses)
    assert [step for step, _ in curves["epoch/val_accuracy"]] == [1, 2]
    assert "epoch/loss" in curves and not any(tag.endswith("resumed") for tag in curves)


def test_skip_writes_tensorboard_events_where_asked(tiny_model_dir, train_csv, tmp_path):
    logs = tmp_path / "my-logs"
    args = ["skip", "--model", str(tiny_model_dir("bert", layers=4)), "--data", str(train_csv)]
    args += ["--out", str(tmp_path / "skip"), "--budget", "0.5", "--epochs", "2", "--max-length", "16", "-q"]
    result = runner.invoke(app, [*args, "--report-to", "tensorboard", "--logging-dir", str(logs)])
    assert result.exit_code == 0, result.output
    curves = scalars(logs)
    assert len(curves["train/loss"]) >= 2 and [s for s, _ in curves["epoch/loss"]] == [1, 2]


def test_report_to_refuses_unknown_destinations_and_a_missing_package(planned, tmp_path, monkeypatch):
    model, plan, data = planned
    args = ["train", "--model", str(model), "--plan", str(plan), "--data", str(data), "--out", str(tmp_path / "c")]
    result = runner.invoke(app, [*args, "--epochs", "1", "--report-to", "wandb"])
    assert result.exit_code == 2 and "--report-to" in result.output and "tensorboard" in result.output
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as without the tensorboard package
    result = runner.invoke(app, [*args, "--epochs", "1", "--report-to", "tensorboard"])
    assert result.exit_code == 2 and "pip install tensorboard" in result.output
    assert not (tmp_path / "c").exists()


def test_the_default_writes_no_logs(planned, tmp_path):
    model, plan, data = planned
    args = ["train", "--model", str(model), "--plan", str(plan), "--data", str(data), "--out", str(tmp_path / "c")]
    result = runner.invoke(app, [*args, "--epochs", "1", "-q"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "runs").exists()
