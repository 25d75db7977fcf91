"""``edgetune export`` and ``edgetune inspect`` from the command line."""

import json

import pytest
from typer.testing import CliRunner

from device_sim.package import load_package
from edgetune_cli import app
from tests.conftest import synthetic_rows, write_csv
from tests.packages import make_plan

runner = CliRunner()


def test_help_explains_every_flag():
    result = runner.invoke(app, ["export", "--help"])
    assert result.exit_code == 0
    for flag in ("--model", "--plan", "--out", "--int8", "--top-onnx", "--tar", "--data", "--val-data", "--atol"):
        assert flag in result.output
    result = runner.invoke(app, ["inspect", "--help"])
    assert result.exit_code == 0 and "Exit code 2" in result.output


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model_dir = tiny_model_dir("gpt2")
    make_plan(model_dir).save(root / "plan.json")
    data = write_csv(root / "train.csv", synthetic_rows(60, seed=1))
    args = ["export", "--model", str(model_dir), "--plan", str(root / "plan.json"), "--out", str(root / "pkg")]
    result = runner.invoke(app, [*args, "--int8", "--top-onnx", "--data", str(data), "--threads", "1"])
    assert result.exit_code == 0, result.output
    return root, result.output


def test_export_writes_a_package(exported):
    root, output = exported
    assert "head: logistic probe on 48 examples" in output
    assert "int8: trunk.int8.onnx" in output and "points" in output
    assert "trunk = embeddings + blocks 1..1" in output
    with load_package(root / "pkg") as pkg:
        assert pkg.manifest["head"]["init"] == "probe" and pkg.manifest["top_onnx"]
        assert len(pkg.predict(["apple juice", "vote"])) == 2


def test_inspect_verifies_and_summarizes(exported):
    root, _ = exported
    result = runner.invoke(app, ["inspect", str(root / "pkg")])
    assert result.exit_code == 0, result.output
    for text in ("verified:", "trunk.int8.onnx", "input_ids int64[batch, sequence]", "alpha, beta, gamma"):
        assert text in result.output
    result = runner.invoke(app, ["inspect", str(root / "pkg"), "--json"])
    assert result.exit_code == 0 and '"schema_version": 1' in result.output


def test_inspect_fails_on_a_damaged_package(exported, tmp_path):
    import shutil

    root, _ = exported
    pkg = shutil.copytree(root / "pkg", tmp_path / "pkg")
    data = bytearray((pkg / "top.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (pkg / "top.safetensors").write_bytes(bytes(data))
    result = runner.invoke(app, ["inspect", str(pkg)])
    assert result.exit_code == 2
    assert "FAILED" in result.output and "top.safetensors: sha256 does not match" in result.output
    result = runner.invoke(app, ["inspect", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "no such package" in result.output


def test_export_tar_without_data_warns(exported, tiny_model_dir, tmp_path):
    root, _ = exported
    args = ["export", "--model", str(tiny_model_dir("gpt2")), "--plan", str(root / "plan.json")]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "pkg"), "--tar", "--no-top-onnx", "-q"])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "zero-initialized" in result.output
    assert (tmp_path / "pkg.tar").is_file() and not (tmp_path / "pkg").exists()
    assert runner.invoke(app, ["inspect", str(tmp_path / "pkg.tar")]).exit_code == 0


def test_wrong_plan_is_one_red_line(exported, tiny_model_dir, tmp_path):
    root, _ = exported
    other = tiny_model_dir("gpt2", seed=3)
    args = ["export", "--model", str(other), "--plan", str(root / "plan.json"), "--out", str(tmp_path / "pkg")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "error:" in result.output and "plan was made for another model" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "pkg").exists()
    plan = json.loads((root / "plan.json").read_text())
    assert plan["model_id"] in result.output.replace("\n", "")


def test_bad_data_fails_before_any_work(exported, tmp_path):
    root, _ = exported
    bad = write_csv(tmp_path / "bad.csv", [("apple juice", "alpha"), ("hello", "omega")])
    args = ["export", "--model", str(tmp_path / "no-model"), "--plan", str(root / "plan.json")]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "pkg"), "--data", str(bad)])
    assert result.exit_code == 2
    assert "row 3: label 'omega'" in result.output and not (tmp_path / "pkg").exists()
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "pkg"), "--val-fraction", "1.5"])
    assert result.exit_code == 2 and "--val-fraction" in result.output


def test_export_refuses_a_plan_longer_than_the_models_positions(tiny_model_dir, train_csv, tmp_path):
    """A package whose max_length the trunk has no positions for would be refused on every device: refuse it at
    export, in one line that says what to do."""
    from typer.testing import CliRunner

    from edgetune_cli import app

    model = tiny_model_dir("bert")
    runner = CliRunner()
    plan = tmp_path / "plan.json"
    done = runner.invoke(app, ["plan", "--model", str(model), "--data", str(train_csv), "--out", str(plan), "-q"])
    assert done.exit_code == 0, done.output
    done = runner.invoke(app, ["export", "--model", str(model), "--plan", str(plan), "--data", str(train_csv),
                               "--out", str(tmp_path / "pkg")])  # fmt: skip
    assert done.exit_code == 2
    assert "token positions" in done.output and "--max-length" in done.output
    assert not (tmp_path / "pkg").exists()
