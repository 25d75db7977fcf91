import json

import numpy as np
import pytest
import torch

from edgetune.api import load_model, plan
from edgetune.data import load_dataset
from edgetune.planner import Budget, Plan, PlanError, get_planner
from edgetune.planner.baselines import converged_prefix_cut, gradient_mass_cut


@pytest.fixture()
def bert(tiny_model_dir):
    return load_model(tiny_model_dir("bert", layers=4), max_length=16)


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "gpt2", "llama", "qwen2", "mistral"])
def test_salf_plans_every_family(family, tiny_model_dir, train_csv, tmp_path):
    model = load_model(tiny_model_dir(family), max_length=16)
    p = plan(model, train_csv, planner_params={"sample_size": 60, "policy": "argmax-gain"}, progress=False)
    assert 1 <= p.cut <= 2  # the paper's rule picks a layer and keeps >= 1 block trainable
    cheapest = plan(model, train_csv, planner_params={"sample_size": 60}, progress=False)
    losses = [r.predicted_loss for r in cheapest.rows]
    assert all(x is not None and x >= 0 for x in losses) and losses[0] == 0.0
    within = [r.cut for r in cheapest.rows if r.predicted_loss <= 1.0]
    assert cheapest.cut == max(within)  # the cheapest cut within the default tolerance
    assert len(p.rows) == 4
    devs = [r.deviation for r in p.rows]
    assert all(d is not None and d >= 0 for d in devs)
    fitted = p.planner_params["fitted"]
    assert fitted["basis"] == ("readout" if family in ("gpt2", "llama", "qwen2", "mistral") else "probe")
    p.save(tmp_path / "plan.json")
    again = Plan.load(tmp_path / "plan.json")
    assert again.to_dict() == json.loads((tmp_path / "plan.json").read_text())


def test_same_seed_same_plan(bert, train_csv):
    a = plan(bert, train_csv, planner_params={"sample_size": 45}, seed=7, progress=False).to_dict()
    b = plan(bert, train_csv, planner_params={"sample_size": 45}, seed=7, progress=False).to_dict()
    for d in (a, b):
        d.pop("seconds"), d.pop("created_at")
        for key in ("trace_seconds", "analysis_seconds"):
            d["planner_params"]["fitted"].pop(key)
    assert a == b


def test_budget_is_respected(bert, train_csv):
    free = plan(bert, train_csv, planner="full", progress=False)
    assert free.cut == 0
    limited = plan(bert, train_csv, planner="full", budget=Budget(max_backward_frac=0.55), progress=False)
    assert limited.chosen.backward_frac <= 0.55 and limited.chosen.fits_budget
    # the fitting cut closest to full fine-tuning
    assert limited.cut == min(r.cut for r in limited.rows if r.backward_frac <= 0.55)
    mem = [r.train_memory_mb for r in free.rows]
    tight = plan(
        bert,
        train_csv,
        budget=Budget(max_train_memory_mb=mem[3] + 1e-3),
        progress=False,
        planner_params={"sample_size": 45},
    )
    assert tight.chosen.train_memory_mb <= mem[3] + 1e-3
    for row in tight.rows:
        assert row.fits_budget == (row.train_memory_mb <= mem[3] + 1e-3)


def test_impossible_budget_is_a_clear_error(bert, train_csv):
    with pytest.raises(PlanError, match="no cut fits the budget"):
        plan(
            bert, train_csv, budget=Budget(max_train_memory_mb=1e-6), progress=False, planner_params={"sample_size": 45}
        )


def test_topk_full_random(bert, train_csv):
    assert plan(bert, train_csv, planner="topk", planner_params={"k": 1}, progress=False).cut == 3
    assert plan(bert, train_csv, planner="topk", planner_params={"k": 9}, progress=False).cut == 0
    cuts = {plan(bert, train_csv, planner="random", seed=s, progress=False).cut for s in range(12)}
    assert cuts <= {0, 1, 2, 3} and len(cuts) > 1
    same = {plan(bert, train_csv, planner="random", seed=5, progress=False).cut for _ in range(3)}
    assert len(same) == 1


def test_gradnorm_runs_and_restores_the_model(bert, train_csv):
    backbone, _ = bert
    before = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}
    flags = [p.requires_grad for p in backbone.model.parameters()]
    p = plan(bert, train_csv, planner="gradnorm", planner_params={"steps": 2, "batch_size": 8}, progress=False)
    norms = p.planner_params["fitted"]["grad_norm_per_param"]
    assert len(norms) == 4 and all(n > 0 for n in norms)
    assert 0 <= p.cut <= 3
    assert flags == [q.requires_grad for q in backbone.model.parameters()]
    for n, q in backbone.model.named_parameters():
        assert torch.equal(before[n], q) and q.grad is None


def test_gradient_mass_cut_by_hand():
    assert gradient_mass_cut(np.array([1.0, 1.0, 1.0, 7.0]), 0.5) == 3
    assert gradient_mass_cut(np.array([4.0, 1.0, 1.0, 4.0]), 0.6) == 0
    assert gradient_mass_cut(np.array([1.0, 1.0, 1.0, 1.0]), 1.0) == 0


def test_unknown_planner():
    with pytest.raises(ValueError, match="unknown planner 'nope'"):
        get_planner("nope")


def test_single_label_data_is_refused(bert, tmp_path):
    from tests.conftest import write_csv

    path = write_csv(tmp_path / "one.csv", [("apple pear", "alpha")] * 5)
    with pytest.raises(PlanError, match="at least 2 labels"):
        plan(bert, load_dataset(path), progress=False)


def test_plan_json_errors(tmp_path, bert, train_csv):
    p = plan(bert, train_csv, planner="topk", progress=False)
    path = p.save(tmp_path / "plan.json")
    data = json.loads(path.read_text())
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match="schema version 99"):
        Plan.load(path)
    path.write_text("{not json")
    with pytest.raises(PlanError, match="not a valid plan JSON"):
        Plan.load(path)
    data["schema_version"] = 1
    del data["cut"]
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match="missing fields \\['cut'\\]"):
        Plan.load(path)
    with pytest.raises(PlanError, match="not found"):
        Plan.load(tmp_path / "nope.json")


def test_label_words_for_readout_basis(tiny_model_dir, train_csv):
    model = load_model(tiny_model_dir("gpt2"), max_length=16)
    p = plan(model, train_csv, planner_params={"sample_size": 30}, progress=False)
    tokens = p.planner_params["fitted"]["label_tokens"]
    assert len(set(tokens)) == 3
    with pytest.raises(PlanError, match="share their first token"):
        plan(
            model,
            train_csv,
            progress=False,
            planner_params={"sample_size": 30, "label_words": {"alpha": "apple", "beta": "apple"}},
        )


def test_autofreeze_runs_on_a_copy_and_freezes_a_converged_prefix(bert, train_csv):
    backbone, _ = bert
    before = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}
    p = plan(bert, train_csv, planner="autofreeze", planner_params={"steps": 4, "batch_size": 8}, progress=False)
    rates = p.planner_params["fitted"]["grad_norm_change_rate"]
    assert len(rates) == 4 and all(r >= 0 for r in rates)
    assert 0 <= p.cut <= 3
    for n, q in backbone.model.named_parameters():
        assert torch.equal(before[n], q)


def test_converged_prefix_by_hand():
    assert converged_prefix_cut(np.array([0.1, 0.2, 0.9, 0.05]), 50.0) == 1  # median 0.15
    assert converged_prefix_cut(np.array([0.1, 0.2, 0.9, 0.05]), 75.0) == 2
    assert converged_prefix_cut(np.array([0.9, 0.1, 0.1, 0.1]), 50.0) == 0
    assert converged_prefix_cut(np.array([0.1, 0.1, 0.1, 0.1]), 50.0) == 4


def _without_timings(p: Plan) -> dict:
    d = p.to_dict()
    d.pop("seconds"), d.pop("created_at")
    for key in ("trace_seconds", "analysis_seconds"):
        d["planner_params"]["fitted"].pop(key)
    return d


def test_row_order_does_not_change_the_plan(bert, train_csv):
    from edgetune.data import TextDataset

    data = load_dataset(train_csv)
    first = plan(bert, data, planner_params={"sample_size": 24, "max_sample_size": 24}, progress=False)
    for seed in (1, 2):
        perm = np.random.default_rng(seed).permutation(len(data))
        shuffled = TextDataset([data.texts[i] for i in perm], [data.labels[i] for i in perm], data.source)
        again = plan(bert, shuffled, planner_params={"sample_size": 24, "max_sample_size": 24}, progress=False)
        assert _without_timings(again) == _without_timings(first)
    assert first.confidence is not None and 0 < first.confidence["chosen"] <= first.confidence["resamples"] == 200
    assert abs(sum(r.chosen_share for r in first.rows) - 1.0) < 1e-9
    assert all(r.predicted_loss_low <= r.predicted_loss_high for r in first.rows)


def test_the_sample_grows_to_the_whole_set_by_default(bert, train_csv):
    data = load_dataset(train_csv)
    p = plan(bert, data, planner_params={"sample_size": 8}, progress=False)
    tried = [t["sample_size"] for t in p.planner_params["fitted"]["samples_tried"]]
    assert tried[0] == 8 and tried[-1] == len(data) and tried == sorted(tried)
    early = plan(bert, data, planner_params={"sample_size": 8, "confidence": 0.0}, progress=False)
    assert [t["sample_size"] for t in early.planner_params["fitted"]["samples_tried"]] == [8]
