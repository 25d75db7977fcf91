import json

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from device_sim.package import load_package
from edgetune.api import load_model, plan
from edgetune.data import load_dataset
from edgetune.evaluation import load_trained
from edgetune.finetune import finetune
from edgetune.merge import MergeError, merge_files
from edgetune.train import TrainConfig
from edgetune_cli import app
from tests.conftest import synthetic_rows, write_csv

runner = CliRunner()


@pytest.fixture()
def regrouped_csv(tmp_path):
    """The same texts as train_csv with a second label grouping (alpha+beta -> 'x', gamma -> 'y')."""
    rows = [(t, "x" if y in ("alpha", "beta") else "y") for t, y in synthetic_rows(90)]
    return write_csv(tmp_path / "regrouped.csv", rows)


def _train(model_dir, data, out, seed=0):
    backbone_tok = load_model(model_dir, max_length=16)
    p = plan(backbone_tok, data, planner="topk", planner_params={"k": 2}, progress=False)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=1e-3, seed=seed, progress=False)
    finetune(backbone_tok, p, data, out, config=cfg)
    return out


def test_merge_cli_two_label_groupings(tiny_model_dir, train_csv, regrouped_csv, tmp_path):
    base = tiny_model_dir("bert", layers=4)
    a = _train(base, train_csv, tmp_path / "a")
    b = _train(base, regrouped_csv, tmp_path / "b", seed=1)
    out = tmp_path / "merged"
    result = runner.invoke(app, ["merge", "--base", str(base), "--models", str(a), str(b), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "rankmean of 2 models" in result.output
    merged, encoder = load_trained(out)
    meta = json.loads((out / "edgetune.json").read_text())
    assert meta["merge"]["heads"].startswith("from") and merged.labels == ["alpha", "beta", "gamma"]
    ca, _ = load_trained(a)
    cb, _ = load_trained(b)
    sa, sb, sm = ca.state_dict(), cb.state_dict(), merged.state_dict()
    trained = [k for k in sa if ".layer.3." in k and k.endswith("weight")]
    frozen = [k for k in sa if ".layer.0." in k]
    for k in trained:  # every trained tensor lies between (and differs from) the two fine-tuned ones
        lo, hi = torch.minimum(sa[k], sb[k]), torch.maximum(sa[k], sb[k])
        assert torch.all(sm[k] >= lo - 1e-6) and torch.all(sm[k] <= hi + 1e-6)
    for k in frozen:
        assert torch.equal(sm[k], sa[k])
    assert torch.equal(sm["head.weight"], sa["head.weight"])
    ids, mask = (torch.from_numpy(x) for x in encoder(["apple goal", "vote"]))
    assert merged(ids, mask).shape == (2, 3)


def test_merge_refuses_a_model_of_another_base(tiny_model_dir, train_csv, tmp_path):
    a = _train(tiny_model_dir("bert", layers=4), train_csv, tmp_path / "a")
    other = _train(tiny_model_dir("bert", layers=4, seed=9), train_csv, tmp_path / "o")
    with pytest.raises(MergeError, match="not fine-tuned from this base"):
        merge_files(tiny_model_dir("bert", layers=4), [a, other], tmp_path / "m")
    result = runner.invoke(
        app,
        [
            "merge",
            "--base",
            str(tiny_model_dir("bert", layers=4)),
            "--models",
            str(a),
            str(other),
            "--out",
            str(tmp_path / "m"),
        ],
    )
    assert result.exit_code == 2 and "not fine-tuned from this base" in result.output
    assert not (tmp_path / "m").exists()
    big = _train(tiny_model_dir("bert", layers=4, hidden=48), train_csv, tmp_path / "big")
    with pytest.raises(MergeError, match="different shapes"):
        merge_files(tiny_model_dir("bert", layers=4), [a, big], tmp_path / "m")


def test_merge_state_files(tmp_path):
    from safetensors.torch import load_file, save_file

    base = {"blocks.0.attn.weight": torch.ones(2, 2), "head.weight": torch.zeros(3)}
    m1 = {"blocks.0.attn.weight": torch.ones(2, 2) * 1.1, "head.weight": torch.ones(3)}
    m2 = {"blocks.0.attn.weight": torch.ones(2, 2) * 1.3, "head.weight": torch.ones(3) * 3}
    for name, state in (("base", base), ("m1", m1), ("m2", m2)):
        save_file(state, str(tmp_path / f"{name}.safetensors"))
    report = merge_files(
        tmp_path / "base.safetensors",
        [tmp_path / "m1.safetensors", tmp_path / "m2.safetensors"],
        tmp_path / "out.safetensors",
        method="average",
    )
    out = load_file(str(tmp_path / "out.safetensors"))
    assert torch.allclose(out["blocks.0.attn.weight"], torch.ones(2, 2) * 1.2)
    assert torch.allclose(out["head.weight"], torch.ones(3) * 2)
    assert report.num_models == 2


def test_skip_cli_then_export_with_budget(tiny_model_dir, train_csv, tmp_path):
    model = tiny_model_dir("bert", layers=4)
    ckpt = tmp_path / "skip"
    result = runner.invoke(
        app,
        [
            "skip",
            "--model",
            str(model),
            "--data",
            str(train_csv),
            "--out",
            str(ckpt),
            "--budget",
            "0.5",
            "--epochs",
            "2",
            "--max-length",
            "16",
            "--eval-data",
            str(train_csv),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "held-out accuracy" in result.output
    meta = json.loads((ckpt / "edgetune.json").read_text())
    assert len(meta["skipped_layers"]) == 2 and len(meta["hadskip"]["mean_gate"]) == 4
    # a plan made for the base model applies to the HadSkip checkpoint (base_model_hash)
    p = plan(
        load_model(model, max_length=16),
        load_dataset(train_csv),
        planner="topk",
        planner_params={"k": 0},
        progress=False,
    )
    plan_path = p.save(tmp_path / "plan.json")
    for budget, kept in (("0.75", 3), ("0.25", 1)):
        pkg = tmp_path / f"pkg{budget}"
        result = runner.invoke(
            app,
            [
                "export",
                "--model",
                str(ckpt),
                "--plan",
                str(plan_path),
                "--out",
                str(pkg),
                "--skip-budget",
                budget,
                "--no-top-onnx",
                "-q",
            ],
        )
        assert result.exit_code == 0, result.output
        loaded = load_package(pkg)
        manifest = loaded.manifest
        assert len(manifest["skip"]["kept_layers"]) == kept
        assert len(manifest["skip"]["skipped_layers"]) == 4 - kept
        skip = manifest["skip"]  # block numbers from 1, as everywhere in a package (schema version 2)
        assert sorted(skip["kept_layers"] + skip["skipped_layers"]) == [1, 2, 3, 4]
        above = [b for b in sorted(skip["kept_layers"]) if b > manifest["cut"]]
        assert loaded.top_spec()["blocks"] == manifest["trainable_layers"] == manifest["top"]["blocks"] == above

        graph = onnx.load(str(pkg / "trunk.onnx"))
        blocks_in_graph = {
            n.name.split("/")[3] for n in graph.graph.node if n.name.count("/") > 3 and "layer" in n.name
        }
        assert len(blocks_in_graph) <= kept
        logits = loaded.predict_logits(["apple goal", "vote party"])
        assert np.isfinite(logits).all() and logits.shape == (2, 3)
    # a model without gates cannot be exported with a skip budget
    result = runner.invoke(
        app,
        [
            "export",
            "--model",
            str(model),
            "--plan",
            str(plan_path),
            "--out",
            str(tmp_path / "nogates"),
            "--skip-budget",
            "0.5",
            "-q",
        ],
    )
    assert result.exit_code == 2 and "edgetune skip" in result.output


def test_skip_cli_refuses_to_replace_a_finished_model_without_overwrite(tiny_model_dir, train_csv, tmp_path):
    out = tmp_path / "skip"
    args = ["skip", "--model", str(tiny_model_dir("bert", layers=2)), "--data", str(train_csv), "--out", str(out)]
    args += ["--epochs", "1", "--max-length", "12", "-q"]
    assert runner.invoke(app, args).exit_code == 0
    first = (out / "head.safetensors").read_bytes()
    result = runner.invoke(app, [*args, "--seed", "1"])
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (out / "head.safetensors").read_bytes() == first  # nothing lost
    result = runner.invoke(app, [*args, "--seed", "1", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (out / "head.safetensors").read_bytes() != first
