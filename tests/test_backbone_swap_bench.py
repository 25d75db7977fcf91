"""benchmarks/backbone_swap.py: the direction options, the validation grid, the paired test and its table."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import backbone_swap as bench  # noqa: E402
from table_renderers import backbone_swap as render  # noqa: E402


def test_direction_options_parse():
    args = bench.parse_args(["--old", "mpnet", "--new", "minilm", "--corpus", "bbc-news", "tweets"])
    assert (args.old, args.new, args.corpus) == ("mpnet", "minilm", ["bbc-news", "tweets"])
    assert bench.stem_of("mpnet", "minilm") == "backbone_swap_mpnet_to_minilm"
    assert bench.stem_of("minilm", "mpnet") == "backbone_swap"  # the upgrade keeps its file
    assert bench.parse_args([]).old == "minilm" and bench.parse_args([]).new == "mpnet"
    for bad in (["--old", "mpnet", "--new", "mpnet"], ["--old", "mpnet", "--new", "derived"], ["--corpus", "trec"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


def _rows(n_users=2, n=30, d_new=8, d_old=6, labels=3):
    rng = np.random.default_rng(0)
    rows = []
    for u in range(n_users):
        new_train, new_test = rng.normal(size=(n, d_new)), rng.normal(size=(10, d_new))
        mix = rng.normal(size=(d_new, d_old))
        old_head, new_head, old_global = torch.nn.Linear(d_old, labels), torch.nn.Linear(d_new, labels), None
        old_global = torch.nn.Linear(d_old, labels)
        old_train = new_train @ mix
        with torch.no_grad():
            y_train = old_head(torch.as_tensor(old_train, dtype=torch.float32)).argmax(1).numpy()
            y_test = old_head(torch.as_tensor(new_test @ mix, dtype=torch.float32)).argmax(1).numpy()
            teacher = old_head(torch.as_tensor(old_train, dtype=torch.float32)).numpy()
        rows.append({"user": f"u{u}", "kind": "swap", "y_train": y_train, "y_test": y_test,
                     "new_train": new_train.astype(np.float32), "new_test": new_test.astype(np.float32),
                     "old_train": old_train.astype(np.float32), "old_head": old_head,
                     "old_global_head": old_global, "new_head": new_head, "teacher": teacher})  # fmt: skip
    return rows


def test_a_cached_validation_row_reads_back_without_unpickling(tmp_path):
    """The validation cache is safetensors (no pickle): arrays, scalars and the three heads come back equal."""
    row = {**_rows(n_users=1)[0], "personal_acc": 0.75, "none_acc": 0.5}
    path = tmp_path / "u0.safetensors"
    bench._save_validation_row(path, row)
    back = bench._load_validation_row(path)
    assert set(back) == set(row)
    for name in ("old_head", "old_global_head", "new_head"):
        assert type(back[name]) is torch.nn.Linear
        assert torch.equal(back[name].weight, row[name].weight) and torch.equal(back[name].bias, row[name].bias)
    for key in ("y_train", "y_test", "new_train", "new_test", "old_train", "teacher"):
        assert back[key].dtype == row[key].dtype and np.array_equal(back[key], row[key])
    assert (back["user"], back["kind"], back["personal_acc"], back["none_acc"]) == ("u0", "swap", 0.75, 0.5)


def test_choose_settings_records_each_lever(monkeypatch):
    monkeypatch.setattr(bench, "GRID", {"form": ("plain",), "map_on": ("all", "curated"), "ridge_alpha": (1.0,),
                                        "tune_epochs": (0, 5), "tune_lr": (1e-2,), "distill": (0.0, 1.0)})  # fmt: skip
    out = bench.choose_settings(_rows(), draws=2)
    assert len(out["grid"]) == 2 * 3  # no tuning steps: one entry, whatever the learning rate or distillation
    assert set(out["best_by_map_on"]) == {"all", "curated"}
    assert [c["cluster_on"] for c in out["clusterings"]] == ["new", "old", "both"]
    assert out["chosen"]["fraction"] == 0.1 and out["chosen"]["cluster_on"] in ("new", "old", "both")
    assert len(out["random_selection_at_chosen"]["per_user"]) == 2
    # the old space is a linear image of the new one: the map fitted on all 30 texts (no labels) recovers it better
    # than the one fitted on the 3 curated ones
    best = out["best_by_map_on"]
    assert best["all"]["mean_accuracy"] >= 0.9 and best["all"]["mean_accuracy"] > best["curated"]["mean_accuracy"]


def _user(corpus, kind, fala, rand, retrain=0.9):
    run = {"accuracy": 0.0, "examples_used": 3, "backward_flops": 1.0, "seconds": 1.0,
           "full_retrain_backward_flops": 1e9}  # fmt: skip
    return {"corpus": corpus, "kind": kind, "num_train": 30, "before": {"personal": 0.9, "global": 0.5},
            "after": {"none": {**run, "accuracy": 0.5, "backward_flops": 0.0}, "fala": {**run, "accuracy": fala},
                      "fala-random": {**run, "accuracy": rand, "accuracy_per_draw": [rand]},
                      "retrain": {**run, "accuracy": retrain}}}  # fmt: skip


def test_paired_interval_and_the_table_of_two_corpora():
    from edgetune_fleet.fleet import summarize

    rows = [_user(c, k, 0.85 + 0.01 * i, 0.84 + 0.005 * i) for c in ("bbc-news", "tweets") for k in ("prior", "swap")
            for i in range(3)]  # fmt: skip
    test = bench.paired_test(rows)
    diff = np.array([r["after"]["fala"]["accuracy"] - r["after"]["fala-random"]["accuracy"] for r in rows])
    assert test["mean_difference"] == pytest.approx(diff.mean())
    assert test["ci95_t"][0] < diff.mean() < test["ci95_t"][1]
    assert test["ci95_bootstrap"][0] <= diff.mean() <= test["ci95_bootstrap"][1]
    summary = summarize(rows)
    summary["cluster_vs_random_paired"] = test
    summary["by_kind"] = bench.by_kind(rows)
    summary["by_corpus"] = bench.by_corpus(rows)
    summary["by_corpus_and_kind"] = bench.by_group(rows, lambda r: f"{r['corpus']} / {r['kind']}")
    table = render({"direction": ["mpnet", "minilm"], "summary": summary, "users": rows})
    assert "re-training MiniLM's planned top" in table and "before the swap (MPNet + personal state)" in table
    assert "tweets / swap" in table.splitlines()[0]  # a column per corpus and kind
    assert "| tweets | 6 |" in table and "| **all** | 12 |" in table
