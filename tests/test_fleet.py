"""Fleet simulation of a backbone swap, the derived backbone, and the swap / simulate commands."""

import json
import re
import shutil
import warnings

import pytest
from typer.testing import CliRunner

from edgetune.backbones import Backbone
from edgetune.data import TextDataset
from edgetune_cli import app
from edgetune_fleet.derived import derive_backbone
from edgetune_fleet.fleet import FleetConfig, simulate_fleet
from edgetune_fleet.users import UserConfig, simulate_users
from tests.conftest import strict_json, synthetic_rows, write_csv
from tests.devices import export_derived_package, export_probe_package, fast

runner = CliRunner()


@pytest.fixture(scope="module")
def packages(tiny_model_dir, tmp_path_factory):
    """Old: a 4-block tiny BERT (cut 2); new: the same model without its top block (cut 2 of 3)."""
    root = tmp_path_factory.mktemp("fleet")
    model = tiny_model_dir("bert", layers=4)
    new, derived = export_derived_package(model, root)
    return {"old": export_probe_package(model, root / "old"), "new": new, "derived": derived, "model": model}


def test_derived_backbone_is_the_model_without_its_top_blocks(packages):
    original, derived = Backbone.from_pretrained(packages["model"]), Backbone.from_pretrained(packages["derived"])
    assert derived.num_layers == original.num_layers - 1
    assert derived.fingerprint() != original.fingerprint()
    nested = derive_backbone(packages["model"], packages["derived"].parent / "not" / "yet" / "there", drop_top=2)
    assert Backbone.from_pretrained(nested).num_layers == 2  # parents are created
    with pytest.raises(ValueError, match="drop_top must be in 1..3"):
        derive_backbone(packages["model"], packages["derived"].parent / "x", drop_top=4)


def test_simulate_fleet_reports_every_method(packages, tmp_path):
    rows = synthetic_rows(400, seed=7)
    pool = TextDataset([t for t, _ in rows], [y for _, y in rows])
    users = simulate_users(pool, UserConfig(num_users=2, examples_per_user=100, seed=0, preference_fraction=1.0))
    config = FleetConfig(personalize=fast(), random_draws=2, threads=1)
    results = simulate_fleet(packages["old"], packages["new"], users, config)
    assert [r["user"] for r in results["users"]] == [u.user_id for u in users]
    for row in results["users"]:
        assert set(row["after"]) == {"none", "fala", "fala-random", "head-only", "retrain"}
        assert len(row["after"]["fala-random"]["accuracy_per_draw"]) == 2
        assert row["after"]["fala"]["examples_used"] == row["after"]["head-only"]["examples_used"] < row["num_train"]
        assert row["after"]["fala"]["backward_flops"] < row["after"]["retrain"]["backward_flops"]
    summary = results["summary"]
    assert summary["cluster_minus_random"]["pairs"] == 4
    assert 0 < summary["fala_over_retrain"]["examples_fraction"] <= 0.15
    assert summary["methods"]["fala"]["flops_reduction"]["min"] > 100  # tiny model; MiniLM: see the benchmark


def test_swap_and_simulate_commands(packages, tmp_path):
    for command in ("swap", "simulate"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "--old" in result.output and "--new" in result.output
    user = write_csv(tmp_path / "user.csv", synthetic_rows(80, seed=3))
    personal = tmp_path / "personal"
    args = ["personalize", "--package", str(packages["old"]), "--data", str(user), "--out", str(personal), "-q"]
    assert runner.invoke(app, [*args, "--epochs", "2"]).exit_code == 0
    swap = ["swap", "--old", str(packages["old"]), "--new", str(packages["new"]), "--personal", str(personal)]
    result = runner.invoke(app, [*swap, "--data", str(user), "--out", str(tmp_path / "new-personal")])
    assert result.exit_code == 0, result.output
    assert "swapped with fala on 8 of 80 examples" in result.output
    assert re.search(r"accuracy on 80 texts of .*: before \d+\.\d%, after \d+\.\d%", " ".join(result.output.split()))
    predict = ["predict", "--package", str(packages["new"]), "--personal", str(tmp_path / "new-personal")]
    assert runner.invoke(app, [*predict, "--text", "goal match team"]).exit_code == 0
    residual = ["--form", "residual", "--ridge-alpha", "0.1", "--tune-lr", "0.01", "--tune-epochs", "20"]
    result = runner.invoke(app, [*swap, "--data", str(user), "--out", str(tmp_path / "residual"), *residual])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "residual" / "personal.json").read_text())["tuner"]["params"]["form"] == "residual"
    result = runner.invoke(app, [*swap, "--data", str(user), "--out", str(tmp_path / "bad"), "--form", "other"])
    assert result.exit_code == 2 and "form must be one of" in result.output

    # a corrupt new package: one red line, nothing written, the old pair untouched
    broken = tmp_path / "broken"
    shutil.copytree(packages["new"], broken)
    (broken / "top.safetensors").write_bytes(b"garbage")
    swap[4] = str(broken)
    result = runner.invoke(app, [*swap, "--data", str(user), "--out", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "new package" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "nope").exists()
    old_predict = ["predict", "--package", str(packages["old"]), "--personal", str(personal), "--text", "goal"]
    assert runner.invoke(app, old_predict).exit_code == 0

    corpus = write_csv(tmp_path / "corpus.csv", synthetic_rows(300, seed=9))
    out = tmp_path / "sim"
    sim = ["simulate", "--old", str(packages["old"]), "--new", str(packages["new"]), "--data", str(corpus)]
    sim += ["--out", str(out), "--users", "2", "--examples-per-user", "60", "--epochs", "2", "-q"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's "invalid value" on a ratio over nothing
        result = runner.invoke(app, [*sim, "--method", "none", "--method", "fala", "--method", "retrain"])
    assert result.exit_code == 0, result.output
    saved = strict_json(out / "simulate.json")  # "none" trains nothing: its FLOPs ratio is null, not Infinity
    for line in (out / "simulate.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: 1 / 0)
    assert set(saved["summary"]["methods"]) == {"none", "fala", "retrain"}
    assert "flops_reduction" not in saved["summary"]["methods"]["none"]
    assert all(u["after"]["none"].get("flops_reduction") is None for u in saved["users"])
    # a selecting job that keeps the prior shift still trained its other candidates: never 0 FLOPs
    assert all(
        u["before"]["backward_flops"] > 0 and u["after"]["retrain"]["backward_flops"] > 0 for u in saved["users"]
    )
    assert "nothing trained" in result.output and "inf" not in result.output
    assert (out / "simulate.png").stat().st_size > 10_000
    assert "FaLA reaches" in result.output
    result = runner.invoke(app, [*sim, "--method", "magic"])
    assert result.exit_code == 2 and "unknown fleet methods" in result.output
