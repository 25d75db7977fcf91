"""Learning rates that depend on what is trained, and the validation search behind ``--lr auto``."""

import json

import pytest
from typer.testing import CliRunner

from edgetune.api import load_model, plan
from edgetune.finetune import finetune
from edgetune.learning_rates import (
    ADAPTER_LR,
    ALL_BLOCKS_LR,
    FEW_BLOCKS_LR,
    HEAD_ALONE_LR,
    HEAD_LR,
    block_learning_rate,
    default_learning_rates,
    lr_candidates,
    step_factor,
)
from edgetune.train import TrainConfig
from edgetune_cli import app
from tests.conftest import synthetic_rows, write_csv


def test_rule_by_trained_depth():
    assert default_learning_rates(0, 6) == (FEW_BLOCKS_LR, HEAD_ALONE_LR)  # the head alone takes larger steps
    assert default_learning_rates(1, 6) == (FEW_BLOCKS_LR, HEAD_LR)
    assert block_learning_rate(1, 6) == block_learning_rate(3, 6) == FEW_BLOCKS_LR
    assert block_learning_rate(6, 6) == pytest.approx(ALL_BLOCKS_LR)
    rates = [block_learning_rate(k, 6) for k in range(3, 7)]
    assert all(a > b for a, b in zip(rates, rates[1:]))  # deeper training, smaller steps
    assert block_learning_rate(6, 6, "lora") == ADAPTER_LR
    with pytest.raises(ValueError, match="trained_blocks"):
        block_learning_rate(7, 6)


def test_short_runs_take_larger_steps():
    assert step_factor(None) == step_factor(250) == step_factor(10_000) == 1.0
    assert step_factor(100) == pytest.approx((250 / 100) ** 0.5)
    assert step_factor(5) == 3.0  # capped
    assert default_learning_rates(2, 6, steps=5) == (FEW_BLOCKS_LR * 3, HEAD_LR * 3)


def test_candidates_bracket_the_rule():
    grid = lr_candidates(2, 6)
    assert [b for b, _ in grid] == pytest.approx([FEW_BLOCKS_LR / 3, FEW_BLOCKS_LR, FEW_BLOCKS_LR * 3])
    assert {h for _, h in grid} == {HEAD_LR}
    head_only = lr_candidates(0, 6)  # only the head trains: its rate is what moves
    assert [h for _, h in head_only] == pytest.approx([HEAD_ALONE_LR / 3, HEAD_ALONE_LR, HEAD_ALONE_LR * 3])


@pytest.fixture()
def small(tiny_model_dir, tmp_path):
    model = tiny_model_dir("bert", layers=4)
    train = write_csv(tmp_path / "train.csv", synthetic_rows(80))
    return model, train


def test_trainer_without_rates_uses_the_rule_for_the_cut(small):
    model, train = small
    for trained in (0, 1, 4):  # the head alone, one block, every block
        p = plan(load_model(model, 16), train, planner="topk", planner_params={"k": trained}, progress=False)
        assert p.cut == 4 - trained
        result = finetune(load_model(model, 16), p, train, config=TrainConfig(epochs=1, progress=False, device="cpu"))
        steps = -(-80 // 16)
        assert (result.config.lr, result.config.head_lr) == default_learning_rates(trained, 4, steps=steps)


def test_search_keeps_the_best_candidate_on_validation(small, tmp_path):
    model, train = small
    p = plan(load_model(model, 16), train, planner="topk", planner_params={"k": 1}, progress=False)
    out = tmp_path / "ckpt"
    config = TrainConfig(epochs=1, progress=False, device="cpu", val_fraction=0.25)
    result = finetune(load_model(model, 16), p, train, out, config, search_lr=True)
    trials = result.lr_search
    assert [(t["lr"], t["head_lr"]) for t in trials] == lr_candidates(1, 4, steps=-(-60 // 16))
    best = max(trials, key=lambda t: t["val_macro_f1"])
    assert (result.config.lr, result.config.head_lr) == (best["lr"], best["head_lr"])
    assert json.loads((out / "train.json").read_text())["lr_search"] == trials


def test_cli_lr_auto_and_bad_values(small, tmp_path):
    model, train = small
    runner = CliRunner()
    plan_path = tmp_path / "plan.json"
    args = ["plan", "--model", str(model), "--data", str(train), "--out", str(plan_path), "--max-length", "16"]
    assert runner.invoke(app, [*args, "--planner", "topk", "--k", "1", "-q"]).exit_code == 0
    base = ["train", "--model", str(model), "--plan", str(plan_path), "--data", str(train), "--epochs", "1"]
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "auto"), "--lr", "auto", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "learning-rate search" in result.output and "learning rates: blocks" in result.output
    bad = runner.invoke(app, [*base, "--out", str(tmp_path / "bad"), "--lr", "fast"])
    assert bad.exit_code == 2 and "'auto'" in bad.output
    assert not (tmp_path / "bad").exists()
