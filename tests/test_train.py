import json
import os

import numpy as np
import pytest
import torch

from edgetune.api import load_model, plan
from edgetune.checkpoint import load_checkpoint
from edgetune.data import DataError, load_dataset
from edgetune.evaluation import evaluate_classifier, load_trained
from edgetune.finetune import finetune
from edgetune.planner import PlanError
from edgetune.train import TrainConfig, TrainError
from tests.conftest import Crash, crash_at, synthetic_rows, write_csv


def cfg(**kw) -> TrainConfig:
    base = {"epochs": 3, "batch_size": 16, "lr": 1e-3, "progress": False, "device": "cpu"}
    return TrainConfig(**{**base, **kw})


@pytest.fixture()
def setup(tiny_model_dir, tmp_path):
    def make(family: str = "bert", k: int = 2, layers: int = 4):
        model = tiny_model_dir(family, layers=layers)
        train = write_csv(tmp_path / "train.csv", synthetic_rows(90))
        test = write_csv(tmp_path / "test.csv", synthetic_rows(30, seed=1))
        p = plan(load_model(model, 16), train, planner="topk", planner_params={"k": k}, progress=False)
        return model, p, train, test

    return make


def _same(a: dict, b: dict, atol: float = 1e-5) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol) for k in a)


@pytest.mark.parametrize(("family", "tuner"), [("bert", "full"), ("gpt2", "lora"), ("llama", "full")])
def test_naive_and_cached_modes_train_the_same_model(setup, family, tuner):
    model, p, train, _ = setup(family)
    naive = finetune(model, p, train, config=cfg(mode="naive"), tuner=tuner)
    cached = finetune(model, p, train, config=cfg(mode="cached"), tuner=tuner)
    assert _same(naive.delta, cached.delta)
    assert np.allclose([h["loss"] for h in naive.history], [h["loss"] for h in cached.history], atol=1e-6)
    untrained = finetune(model, p, train, config=cfg(mode="cached", epochs=1, lr=1e-9, head_lr=1e-9), tuner=tuner)
    assert not _same(untrained.delta, cached.delta, atol=1e-4)  # training moved the weights
    assert naive.cache_bytes == 0 and cached.cache_bytes > 0


def test_memory_mapped_and_fp16_caches(setup, tmp_path):
    model, p, train, _ = setup()
    memory = finetune(model, p, train, config=cfg(cache="memory"))
    mapped = finetune(model, p, train, config=cfg(cache="mmap"))
    half = finetune(model, p, train, config=cfg(cache="memory", cache_dtype="float16"))
    assert _same(memory.delta, mapped.delta, atol=1e-6)
    assert half.cache_bytes < 0.6 * memory.cache_bytes
    assert _same(memory.delta, half.delta, atol=5e-3)


def test_training_learns_the_task(setup, tmp_path):
    model, p, _, _ = setup(k=2)
    train = write_csv(tmp_path / "big.csv", synthetic_rows(300))
    test = write_csv(tmp_path / "held_out.csv", synthetic_rows(60, seed=1))
    result = finetune(model, p, train, tmp_path / "out", cfg(epochs=6, lr=3e-3, head_lr=3e-2), eval_data=test)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0]
    assert result.metrics["accuracy"] >= 0.9 and result.metrics["macro_f1"] >= 0.9
    # evaluating on held-out data does not leave dropout switched on in the returned model
    assert not any(module.training for module in result.classifier.modules())
    # the saved model gives the same metrics through the full forward pass
    clf, encoder = load_trained(tmp_path / "out")
    again = evaluate_classifier(clf, encoder, load_dataset(test), progress=False)
    assert again["accuracy"] == pytest.approx(result.metrics["accuracy"])
    saved = json.loads((tmp_path / "out" / "train.json").read_text())
    assert saved["cut"] == p.cut and len(saved["history"]) == 6
    assert sorted(os.listdir(tmp_path / "out")) == [
        "backbone",
        "delta.safetensors",
        "edgetune.json",
        "head.safetensors",
        "plan.json",
        "train.json",
        "tuner.json",
    ]


@pytest.mark.parametrize("mode", ["cached", "naive"])
def test_resume_after_a_crash_matches_an_uninterrupted_run(setup, tmp_path, mode):
    model, p, train, _ = setup()
    config = cfg(mode=mode, checkpoint_steps=4, val_fraction=0.2, cache="mmap")
    reference = finetune(model, p, train, tmp_path / "ref", config, tuner="lora")
    out = tmp_path / "run"
    with pytest.raises(Crash):
        finetune(model, p, train, out, config, tuner="lora", callbacks=[crash_at(9)])
    ckpt = load_checkpoint(out / "checkpoint")
    assert ckpt.state.global_step == 8 and ckpt.state.epoch == 1 and ckpt.state.step_in_epoch == 3
    assert not (out / "edgetune.json").exists()
    resumed = finetune(model, p, train, out, config, tuner="lora")
    assert _same(reference.delta, resumed.delta, atol=1e-6)
    assert [h["resumed"] for h in resumed.history] == [False, True, False]
    assert resumed.history[0]["loss"] == reference.history[0]["loss"]
    assert resumed.history[-1]["val_accuracy"] == reference.history[-1]["val_accuracy"]
    assert not (out / "checkpoint").exists() and (out / "edgetune.json").exists()


def test_a_crash_while_writing_keeps_the_previous_checkpoint(setup, tmp_path, monkeypatch):
    model, p, train, _ = setup()
    out = tmp_path / "run"
    config = cfg(checkpoint_steps=2)
    with pytest.raises(Crash):
        finetune(model, p, train, out, config, callbacks=[crash_at(3)])
    before = load_checkpoint(out / "checkpoint")

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        finetune(model, p, train, out, config)
    monkeypatch.undo()
    after = load_checkpoint(out / "checkpoint")
    assert after.state == before.state and _same(after.trainable, before.trainable, atol=0)
    assert sorted(os.listdir(out)) == ["checkpoint"]  # no temporary directories left behind
    assert finetune(model, p, train, out, config).history[0]["resumed"]


def test_output_directory_rules(setup, tmp_path):
    model, p, train, _ = setup()
    out = tmp_path / "out"
    finetune(model, p, train, out, cfg(epochs=1))
    with pytest.raises(TrainError, match="already holds a trained model"):
        finetune(model, p, train, out, cfg(epochs=1))
    finetune(model, p, train, out, cfg(epochs=2), overwrite=True)
    assert len(json.loads((out / "train.json").read_text())["history"]) == 2
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(TrainError, match="not empty"):
        finetune(model, p, train, other, cfg(epochs=1))
    assert (other / "notes.txt").read_text() == "mine"


def test_checkpoint_of_a_different_run_is_refused(setup, tmp_path):
    model, p, train, _ = setup()
    out = tmp_path / "run"
    with pytest.raises(Crash):
        finetune(model, p, train, out, cfg(checkpoint_steps=2), callbacks=[crash_at(3)])
    with pytest.raises(TrainError, match="differs in: config"):
        finetune(model, p, train, out, cfg(checkpoint_steps=2, lr=1e-4))
    # naive and cached mode train the same model, so either may resume the other's checkpoint
    assert finetune(model, p, train, out, cfg(checkpoint_steps=2, mode="naive")).history[0]["resumed"]


def test_bad_inputs_are_clear_errors_and_write_nothing(setup, tiny_model_dir, tmp_path):
    model, p, train, _ = setup()
    out = tmp_path / "out"
    unknown = write_csv(tmp_path / "bad.csv", [("apple pear", "alpha"), ("goal", "delta")])
    with pytest.raises(DataError, match=r"row 3: label 'delta' was not seen"):
        finetune(model, p, unknown, out, cfg())
    with pytest.raises(DataError, match="row 3: label 'delta'"):
        finetune(model, p, train, out, cfg(), eval_data=unknown)
    other_weights = tiny_model_dir("bert", layers=4, seed=1)
    with pytest.raises(PlanError, match="other weights"):
        finetune(other_weights, p, train, out, cfg())
    with pytest.raises(PlanError, match="4-layer bert"):
        finetune(tiny_model_dir("bert", layers=3), p, train, out, cfg())
    with pytest.raises(PlanError, match="plan file not found"):
        finetune(model, tmp_path / "nope.json", train, out, cfg())
    assert not out.exists()


def test_early_stopping_keeps_the_best_epoch(setup):
    model, p, train, _ = setup()
    frozen = finetune(model, p, train, config=cfg(epochs=5, lr=1e-12, head_lr=1e-12, val_fraction=0.3, patience=2))
    assert frozen.stopped_early and len(frozen.history) == 3 and frozen.best_epoch == 1
    assert all("val_macro_f1" in h for h in frozen.history)
    with pytest.raises(ValueError, match="patience"):
        cfg(patience=2)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_released_trunk_frees_its_weights_and_comes_back_bit_for_bit(setup, family):
    model, p, train, _ = setup(family)
    kept = finetune(model, p, train, config=cfg())
    backbone, encoder = load_model(model, 16)
    seen = []

    def check(event):
        trunk = [
            *backbone.embeddings.parameters(),
            *(q for b in list(backbone.blocks)[: p.cut] for q in b.parameters()),
        ]
        seen.append({q.device.type for q in trunk})

    released = finetune((backbone, encoder), p, train, config=cfg(release_trunk=True), callbacks=[check])
    assert seen and all(devices == {"meta"} for devices in seen)  # freed while the top trained
    assert _same(kept.delta, released.delta, atol=0)
    ids = torch.randint(5, 30, (2, 6))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        assert torch.equal(kept.classifier(ids, mask), released.classifier(ids, mask))
    with pytest.raises(ValueError, match="release_trunk"):
        cfg(mode="naive", release_trunk=True)
