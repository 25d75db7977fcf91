"""``edgetune personalize``, ``edgetune predict`` and ``edgetune evaluate --package`` from the command line."""

import csv
import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from edgetune_cli import app
from tests.conftest import synthetic_rows, write_csv
from tests.devices import SWAP

runner = CliRunner()
FAST = ["--epochs", "8", "--lr", "3e-3", "--head-lr", "0.1", "--threads", "1", "-q"]


def _user_csv(path, n: int, seed: int):
    return write_csv(path, [(t, SWAP.get(y, y)) for t, y in synthetic_rows(n, seed=seed)])


@pytest.fixture(scope="module")
def personalized(device_packages, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-device")
    pkg = device_packages["main"]
    train = _user_csv(root / "user.csv", 120, 3)
    _user_csv(root / "test.csv", 60, 4)
    args = ["personalize", "--package", str(pkg), "--data", str(train), "--out", str(root / "personal"), *FAST]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return root, pkg, result.output


def test_help_lists_the_flags():
    for command, flags in (
        ("personalize", ("--package", "--data", "--out", "--profile", "--memory-mb", "--cut", "--tuner", "--epochs")),
        ("predict", ("--package", "--personal", "--data", "--text", "--format", "stdin")),
        ("evaluate", ("--model", "--package", "--personal", "--data")),
    ):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0
        for flag in flags:
            assert flag in result.output, (command, flag)


def test_personalize_then_evaluate(personalized):
    root, pkg, output = personalized
    assert "trained blocks 2..3 + head with full on" in output
    assert "on 82 examples (14 validation, 24 held out for the guard)" in output
    assert "guard: kept the personal model, on 24 held-out examples" in " ".join(output.split())
    base = runner.invoke(app, ["evaluate", "--package", str(pkg), "--data", str(root / "test.csv"), "-q"])
    args = ["evaluate", "--package", str(pkg), "--personal", str(root / "personal"), "--data", str(root / "test.csv")]
    mine = runner.invoke(app, [*args, "--out", str(root / "metrics.json"), "-q"])
    assert base.exit_code == 0 and mine.exit_code == 0, base.output + mine.output
    metrics = json.loads((root / "metrics.json").read_text())
    assert metrics["personal"] == str(root / "personal") and metrics["num_examples"] == 60
    assert f"accuracy {metrics['accuracy']:.1%}" in mine.output and mine.output != base.output


def test_predict_texts_file_and_jsonl(personalized):
    root, pkg, _ = personalized
    common = ["predict", "--package", str(pkg), "--personal", str(root / "personal")]
    result = runner.invoke(app, [*common, "--text", "apple juice fruit", "--text", "vote party law"])
    assert result.exit_code == 0, result.output
    labels = result.output.split()
    assert len(labels) == 2 and set(labels) <= {"alpha", "beta", "gamma"}
    result = runner.invoke(app, [*common, "--text", "apple", "--format", "jsonl"])
    row = json.loads(result.output)
    assert row["text"] == "apple" and row["label"] in row["scores"] and abs(sum(row["scores"].values()) - 1) < 1e-4
    unlabelled = write_csv(root / "texts.csv", [(t, "") for t, _ in synthetic_rows(7, seed=5)], ("text", "note"))
    result = runner.invoke(app, [*common, "--data", str(unlabelled), "--out", str(root / "preds.csv")])
    assert result.exit_code == 0, result.output
    with open(root / "preds.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7 and {r["label"] for r in rows} <= {"alpha", "beta", "gamma"}
    result = runner.invoke(app, [*common], input="apple juice\n\nthe goal\n")  # stdin, blank lines skipped
    assert result.exit_code == 0 and len(result.output.split()) == 2


def test_predict_streams_stdin_one_line_at_a_time(personalized):
    root, pkg, _ = personalized
    code = "from edgetune_cli import main; main()"
    args = [sys.executable, "-c", code, "predict", "--package", str(pkg), "--personal", str(root / "personal")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    proc = subprocess.Popen(args, text=True, env=env, **pipes)
    try:
        answers = []
        for text in ("apple juice fruit", "goal match team", "vote law"):
            proc.stdin.write(text + "\n")
            proc.stdin.flush()
            answers.append(proc.stdout.readline().strip())  # answered while stdin is still open
        assert all(a in ("alpha", "beta", "gamma") for a in answers), answers
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr.read()


PERSONALIZE = "personalize --package {pkg} --data {root}/test.csv --out {root}/p2"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("evaluate --package {root}/nowhere --data {root}/test.csv", "no such package"),
        ("evaluate --package {other} --personal {root}/personal --data {root}/test.csv", "belongs to another package"),
        ("evaluate --package {pkg} --data {root}/texts.csv", "missing column 'label'"),
        ("evaluate --package {pkg} --data {root}/unknown.csv", "row 3: label 'omega' was not seen"),
        ("evaluate --package {root}/personal --data {root}/test.csv", "is a personal state, not a package"),
        ("predict --package {pkg} --personal {pkg} --text a", "a device package, not a personal state"),
        ("evaluate --model {root} --package {pkg} --data {root}/test.csv", "exactly one of"),
        (PERSONALIZE + " --profile none --memory-mb 1", "name one, not 'none'"),
        (PERSONALIZE + " --profile phone-low --memory-mb 0.01 --no-select", "run again with --cut"),
    ],
)
def test_common_mistakes_are_one_line_errors(personalized, device_packages, args, message):
    root, pkg, _ = personalized
    write_csv(root / "texts.csv", [("apple", "x")], ("text", "note"))
    write_csv(root / "unknown.csv", [("apple", "alpha"), ("vote", "omega")])
    values = {"root": root, "pkg": pkg, "other": device_packages["other"]}
    result = runner.invoke(app, [a.format(**values) for a in args.split()])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert not (root / "p2").exists()
