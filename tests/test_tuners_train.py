"""RoseLoRA and DSEE through the real trainer, the saved output and the CLI."""

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from edgetune.api import load_model, plan
from edgetune.checkpoint import load_checkpoint
from edgetune.evaluation import load_trained
from edgetune.finetune import finetune
from edgetune.train import TrainConfig
from edgetune_cli import app
from tests.conftest import synthetic_rows, write_csv


class Crash(RuntimeError):
    pass


def cfg(**kw) -> TrainConfig:
    base = {"epochs": 3, "batch_size": 16, "lr": 1e-2, "head_lr": 1e-2, "progress": False, "device": "cpu"}
    return TrainConfig(**{**base, **kw})


@pytest.fixture()
def planned(tiny_model_dir, tmp_path):
    model = tiny_model_dir("bert", layers=4, hidden=64)
    train = write_csv(tmp_path / "train.csv", synthetic_rows(90))
    test = write_csv(tmp_path / "test.csv", synthetic_rows(30, seed=1))
    p = plan(load_model(model, 16), train, planner="topk", planner_params={"k": 2}, progress=False)
    p.save(tmp_path / "plan.json")
    return model, p, train, test


ROSE = {"r": 4, "target_density": 0.2, "warmup": 0.1, "final": 0.2}


def test_roselora_output_holds_the_compact_delta(planned, tmp_path):
    model, p, train, test = planned
    finetune(model, p, train, tmp_path / "lora", cfg(), tuner="lora", tuner_params={"r": 4})
    rose = finetune(model, p, train, tmp_path / "rose", cfg(), tuner="roselora", tuner_params=ROSE, eval_data=test)
    saved = load_file(str(tmp_path / "rose" / "delta.safetensors"))
    assert saved.keys() == rose.delta.keys() and any(k.endswith(".indices") for k in saved)
    assert all(torch.equal(saved[k], rose.delta[k]) for k in saved)
    lora_bytes = (tmp_path / "lora" / "delta.safetensors").stat().st_size
    assert (tmp_path / "rose" / "delta.safetensors").stat().st_size < 0.6 * lora_bytes
    assert json.loads((tmp_path / "rose" / "tuner.json").read_text())["params"]["target_density"] == 0.2
    classifier, _ = load_trained(tmp_path / "rose")  # merged weights: a plain model again
    assert rose.metrics is not None and classifier.num_layers == 4


def test_roselora_resume_after_a_crash_matches_an_uninterrupted_run(planned, tmp_path):
    model, p, train, _ = planned
    config = cfg(checkpoint_steps=4, val_fraction=0.2)
    reference = finetune(model, p, train, tmp_path / "ref", config, tuner="roselora", tuner_params=ROSE)

    def crash(event):
        if event.global_step == 9:
            raise Crash

    out = tmp_path / "run"
    with pytest.raises(Crash):
        finetune(model, p, train, out, config, tuner="roselora", tuner_params=ROSE, callbacks=[crash])
    ckpt = load_checkpoint(out / "checkpoint")
    assert ckpt.state.global_step == 8 and ckpt.tuner_state  # the importance averages travel with it
    resumed = finetune(model, p, train, out, config, tuner="roselora", tuner_params=ROSE)
    assert reference.delta.keys() == resumed.delta.keys()
    assert all(torch.allclose(reference.delta[k].float(), resumed.delta[k].float(), atol=1e-6) for k in reference.delta)


def test_dsee_prunes_on_merge_and_the_saved_model_reloads(planned, tmp_path):
    model, p, train, test = planned
    params = {"r": 4, "sparse_n": 32, "head_prune_ratio": 0.5, "prune_ratio": 0.3}
    result = finetune(model, p, train, tmp_path / "out", cfg(), tuner="dsee", tuner_params=params, eval_data=test)
    report = result.tuner.report
    assert report["removed_heads"].keys() == {"2", "3"} and report["block_params_after"] < report["block_params_before"]
    assert report["flops_nonzero_after"] < report["flops_dense_after"] < report["flops_before"]
    assert report["weight_sparsity"] == pytest.approx(0.3, abs=1e-3)
    assert result.metrics["accuracy"] > 0.4
    assert json.loads((tmp_path / "out" / "train.json").read_text())["tuner_report"] == report
    classifier, encoder = load_trained(tmp_path / "out")  # pruned heads come back from the saved config
    saved = result.classifier.state_dict()
    reloaded = classifier.state_dict()
    assert saved.keys() == reloaded.keys() and all(torch.equal(saved[k], reloaded[k]) for k in saved)
    ids, mask = encoder(["apple juice today", "vote for the party"])
    result.classifier.eval()  # evaluating leaves the top's blocks in train mode
    with torch.no_grad():
        assert torch.equal(
            classifier(torch.as_tensor(ids), torch.as_tensor(mask)),
            result.classifier(torch.as_tensor(ids), torch.as_tensor(mask)),
        )


def test_cli_trains_and_plans_with_the_new_tuners(planned, tmp_path):
    model, _, train, _ = planned
    runner = CliRunner()
    plan_path = tmp_path / "dsee-plan.json"
    result = runner.invoke(
        app,
        ["plan", "--model", str(model), "--data", str(train), "--out", str(plan_path), "--planner", "topk", "-q"]
        + ["--tuner", "dsee", "--tuner-param", "sparse_n=16", "--max-length", "16"],
    )
    assert result.exit_code == 0, result.output
    saved = json.loads(plan_path.read_text())
    assert saved["tuner"] == "dsee" and saved["tuner_params"] == {"sparse_n": 16}
    out = tmp_path / "out"
    args = ["train", "--model", str(model), "--plan", str(tmp_path / "plan.json"), "--data", str(train)]
    args += ["--out", str(out), "--epochs", "1", "-q", "--tuner", "roselora", "--lora-r", "4"]
    result = runner.invoke(app, [*args, "--tuner-param", "target_density=0.5"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "tuner.json").read_text())["params"]["target_density"] == 0.5
    dsee = [*args[:-4], "--tuner", "dsee", "--tuner-param", "head_prune_ratio=0.5", "--overwrite"]
    result = runner.invoke(app, dsee)
    assert result.exit_code == 0 and "pruned: weight sparsity" in result.output, result.output
    for bad, message in (
        (["--tuner-param", "target_density=2"], "target_density"),
        (["--tuner-param", "density"], "KEY=VALUE"),
    ):
        result = runner.invoke(app, [*args, "--overwrite", *bad])
        assert result.exit_code != 0 and message in result.output, result.output
