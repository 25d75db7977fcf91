"""The do-no-harm guard: the test, its margin on tiny splits, refusing a worse top, the kept-global state."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from device_sim.device import Device
from device_sim.guard import decide, min_wins, prior_shift, sign_test_p_value
from device_sim.personalize import DEFAULT_CANDIDATES, PersonalizeConfig
from device_sim.profiles import DeviceProfile
from edgetune_cli import app
from edgetune_format.personal import read_personal_state
from tests.devices import fast, user_data


@pytest.fixture()
def device(device_packages):
    with Device(device_packages["main"], threads=1) as dev:
        yield dev


# -- the test itself ----------------------------------------------------------------------------------------------
def test_sign_test_p_values_are_exact():
    assert sign_test_p_value(5, 0) == pytest.approx(1 / 32)
    assert sign_test_p_value(7, 1) == pytest.approx(9 / 256)  # C(8,7) + C(8,8) over 2^8
    assert sign_test_p_value(7, 2) == pytest.approx(46 / 512)
    assert sign_test_p_value(0, 0) == 1.0 and sign_test_p_value(0, 3) == 1.0
    assert min_wins(0.05) == 5 and min_wins(0.01) == 7 and min_wins(0.2) == 3


def test_the_margin_grows_with_the_noise_of_a_tiny_split():
    def verdict(wins, losses, ties_right=0, ties_wrong=0, alpha=0.05):
        personal = [True] * wins + [False] * losses + [True] * ties_right + [False] * ties_wrong
        global_ = [False] * wins + [True] * losses + [True] * ties_right + [False] * ties_wrong
        return decide(np.array(personal), np.array(global_), alpha)

    assert not verdict(4, 0).keep_personal  # 4 of 4 discordant examples: p = 1/16, not enough at 0.05
    assert verdict(4, 0, alpha=0.1).keep_personal
    assert verdict(5, 0).keep_personal and verdict(5, 0).p_value == pytest.approx(1 / 32)
    assert verdict(7, 1).keep_personal and not verdict(7, 2).keep_personal  # every loss raises the bar
    d = verdict(3, 5, ties_right=10, ties_wrong=2)
    assert not d.keep_personal and d.personal_accuracy < d.global_accuracy
    assert (d.num_examples, d.wins, d.losses) == (20, 3, 5)
    assert not verdict(0, 0, ties_right=3).keep_personal  # no discordant pair: no evidence, keep the global model
    empty = decide(np.array([], dtype=bool), np.array([], dtype=bool))
    assert not empty.keep_personal and empty.num_examples == 0
    with pytest.raises(ValueError):
        decide(np.array([True]), np.array([True, False]))
    with pytest.raises(ValueError):
        decide(np.array([True]), np.array([True]), alpha=1.5)


def test_prior_shift_moves_the_bias_to_the_users_prior():
    rng = np.random.default_rng(0)
    labels = rng.choice(3, size=400, p=[0.7, 0.2, 0.1])
    delta = prior_shift(np.zeros((400, 3)), labels, l2=1e-6)
    want = np.log(np.bincount(labels) / 400)
    assert np.allclose(delta, want - want.mean(), atol=1e-3)
    # confident logits that already fit the labels need (almost) no shift
    logits = np.eye(3)[labels] * 8.0
    assert np.abs(prior_shift(logits, labels)).max() < 0.2


# -- the guard on the device -------------------------------------------------------------------------------------
def test_guard_accepts_a_better_personal_top(device, tmp_path):
    result = device.personalize(user_data(150, seed=3), tmp_path / "p", fast(guard_fraction=0.25))
    assert result.kept == "personal" and result.num_guard == 38
    g = result.guard
    assert g.keep_personal and g.wins > g.losses and g.p_value < 0.05
    assert g.personal_accuracy > g.global_accuracy
    m = json.loads((tmp_path / "p" / "personal.json").read_text())
    assert m["kind"] == "top_delta" and m["guard"]["kept"] == "personal"
    for key in ("personal_accuracy", "global_accuracy", "p_value", "wins", "losses", "num_examples", "alpha"):
        assert key in m["guard"]
    assert m["guard"]["num_examples"] == 38 and m["training"]["num_guard"] == 38


def test_guard_refuses_a_personal_top_made_worse_on_purpose(device, tmp_path):
    # the user files labels as the server does (the global head is right), and training is broken on purpose
    data = user_data(150, seed=3, swap=False)
    broken = fast(guard_fraction=0.25, lr=30.0, head_lr=300.0, max_grad_norm=None, warmup_ratio=0.0, patience=None)
    out = tmp_path / "p"
    result = device.personalize(data, out, broken)
    g = result.guard
    assert g.personal_accuracy < g.global_accuracy and not g.keep_personal
    assert result.kept == "global" and result.trainable_params == 0
    state = read_personal_state(out)
    assert state.kind == "kept_global" and state.tensors == {}
    assert state.manifest["guard"]["global_accuracy"] == pytest.approx(g.global_accuracy)
    assert state.manifest["guard"]["personal_accuracy"] == pytest.approx(g.personal_accuracy)
    assert "not significantly better" in state.manifest["guard"]["reason"]


def test_a_kept_global_state_round_trips_through_predict_and_evaluate(device, device_packages, tmp_path):
    out = tmp_path / "kept"
    broken = fast(guard_fraction=0.25, lr=30.0, head_lr=300.0, max_grad_norm=None, warmup_ratio=0.0, patience=None)
    assert device.personalize(user_data(150, seed=3, swap=False), out, broken).kept == "global"
    test = user_data(40, seed=9)
    assert device.evaluate(test, out) == device.evaluate(test)
    assert np.array_equal(device.predict_logits(test.texts, out), device.predict_logits(test.texts))
    top = device.top(out)
    base = device.package.top_model()
    assert all(torch.equal(a, b) for a, b in zip(top.state_dict().values(), base.state_dict().values()))

    runner = CliRunner()
    data = tmp_path / "test.csv"
    test.to_csv(data)
    pkg = str(device_packages["main"])
    with_state = runner.invoke(app, ["evaluate", "--package", pkg, "--personal", str(out), "--data", str(data), "-q"])
    without = runner.invoke(app, ["evaluate", "--package", pkg, "--data", str(data), "-q"])
    assert with_state.exit_code == 0 and without.exit_code == 0, with_state.output
    acc = [line for line in with_state.output.splitlines() if "accuracy" in line]
    assert acc and acc == [line for line in without.output.splitlines() if "accuracy" in line]
    predicted = runner.invoke(app, ["predict", "--package", pkg, "--personal", str(out), "--text", test.texts[0]])
    assert predicted.exit_code == 0 and predicted.output.strip() == device.predict(test.texts[:1])[0]


def test_cli_personalize_says_when_it_kept_the_global_model(device_packages, tmp_path):
    data = tmp_path / "user.csv"
    user_data(150, seed=3, swap=False).to_csv(data)
    args = ["personalize", "--package", str(device_packages["main"]), "--data", str(data), "--out", str(tmp_path / "p")]
    broken = ["--lr", "30", "--head-lr", "300", "--epochs", "4", "--guard-fraction", "0.25", "--threads", "1", "-q"]
    result = CliRunner().invoke(app, [*args, *broken])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "KEPT THE GLOBAL MODEL" in text and "on 38 held-out examples: personal" in text
    assert read_personal_state(tmp_path / "p").kind == "kept_global"


# -- the device's own choice of configuration ---------------------------------------------------------------------
def test_selection_tries_every_candidate_and_keeps_a_better_one(device, tmp_path):
    result = device.personalize(user_data(150, seed=3), tmp_path / "d", PersonalizeConfig(epochs=2, progress=False))
    assert [c["name"] for c in result.selection["candidates"]] == [c["name"] for c in DEFAULT_CANDIDATES]
    assert result.num_train + result.num_val + result.num_guard == 150 and result.num_guard == 30
    # learning rates that suit the tiny random model (the defaults are chosen for MiniLM)
    tiny = (
        {"name": "prior", "kind": "prior"},
        {"name": "head", "cut": "head", "head_lr": 0.1},
        {"name": "block", "lr": 3e-3, "head_lr": 0.1},
    )
    config = PersonalizeConfig(epochs=8, candidates=tiny, progress=False)
    result = device.personalize(user_data(150, seed=3), tmp_path / "p", config)
    rows = result.selection["candidates"]
    assert [c["name"] for c in rows] == ["prior", "head", "block"]
    chosen = next(c for c in rows if c["name"] == result.candidate.name)
    assert result.selection["chosen"] == chosen["name"]
    assert chosen["val_accuracy"] == max(c["val_accuracy"] for c in rows) > result.selection["global_val_accuracy"]
    assert result.kept == "personal"  # a label swap is something to learn
    test = user_data(60, seed=4)
    assert device.evaluate(test, tmp_path / "p")["accuracy"] > device.evaluate(test)["accuracy"] + 0.2


def test_selection_stays_within_the_profile_budget(device, tmp_path):
    # a time budget for the trunk and the cheap candidates only: the block-training ones are dropped, the most
    # expensive first, and the job's price stays within the budget
    config = PersonalizeConfig(epochs=4, progress=False)
    unlimited = DeviceProfile("unlimited", threads=1, memory_mb=1e6, time_budget_s=1e6, gflops=10)
    with Device(device.package, unlimited, threads=1) as big:
        roomy = big.personalize(user_data(80, 3), tmp_path / "a", config)
    assert roomy.selection["skipped"] == []
    own = {c.name: c.estimate.device_seconds for c in roomy.candidates}
    assert own["prior"] == 0.0 and own["head"] < own["lora"] and own["head"] < own["block"]
    trunk = roomy.estimate.device_seconds - sum(own.values())
    budget = DeviceProfile("tight", threads=1, memory_mb=1e6, time_budget_s=1.01 * (trunk + 2 * own["head"]), gflops=10)
    with Device(device.package, budget, threads=1) as small:
        result = small.personalize(user_data(80, 3), tmp_path / "b", replace(config, candidates=None))
    assert [c["name"] for c in result.selection["candidates"]] == ["prior", "head", "head-fast"]
    assert {s["name"] for s in result.selection["skipped"]} == {"lora", "block"}
    assert result.estimate.device_seconds <= budget.time_budget_s
