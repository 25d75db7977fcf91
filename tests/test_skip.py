import numpy as np
import pytest
import torch

from edgetune.api import load_model
from edgetune.data import load_dataset
from edgetune.modeling import SequenceClassifier
from edgetune.skip import (
    HadSkipConfig,
    LayerGates,
    SkipClassifier,
    fine_grained_init,
    hadskip_finetune,
    run_static,
    static_keep,
    temperature_at,
    train_hadskip,
)
from tests.conftest import Crash, crash_at


def test_temperature_is_annealed_geometrically():
    assert temperature_at(0, 11, 1.0, 0.01) == pytest.approx(1.0)
    assert temperature_at(10, 11, 1.0, 0.01) == pytest.approx(0.01)
    assert temperature_at(5, 11, 1.0, 0.01) == pytest.approx(0.1)


def test_fine_grained_init_keeps_the_most_important_blocks():
    gates = LayerGates(4, 8, adaptive=False)
    fine_grained_init(gates, np.array([0.1, 0.9, 0.05, 0.5]), budget=0.5, scale=2.0)
    assert (gates.bias > 0).tolist() == [False, True, False, True]
    assert static_keep(np.array([0.2, 0.9, 0.1, 0.6]), 0.5) == [1, 3]
    assert static_keep(np.array([0.2, 0.9, 0.1, 0.6]), 0.1) == [1]  # at least one block runs


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_skipped_blocks_are_not_executed(family, tiny_model_dir):
    backbone, enc = load_model(tiny_model_dir(family, layers=4), max_length=12)
    clf = SequenceClassifier(backbone, 3).eval()
    calls = [0] * 4
    for i, block in enumerate(backbone.blocks):
        block.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
    ids, mask = (torch.from_numpy(a) for a in enc(["apple goal vote", "pear the"]))
    with torch.no_grad():
        run_static(clf, ids, mask, keep=[0, 3])
    assert calls == [1, 0, 0, 1]
    model = SkipClassifier(clf, adaptive=False).eval()
    with torch.no_grad():
        model.gates.bias.copy_(torch.tensor([2.0, -2.0, 2.0, -2.0]))
        logits_hard, hard = model(ids, mask, hard=True)
        assert calls == [2, 0, 1, 1]
        assert hard.tolist() == [[1.0, 0.0, 1.0, 0.0]] * 2
        # hard gating equals running only the kept blocks
        assert torch.allclose(logits_hard, run_static(clf, ids, mask, keep=[0, 2]), atol=1e-5)


def test_gates_respect_the_budget_after_training(tiny_model_dir, train_csv):
    backbone, enc = load_model(tiny_model_dir("bert", layers=4), max_length=16)
    data = load_dataset(train_csv)
    cfg = HadSkipConfig(budget=0.5, epochs=3, batch_size=16, calibration_size=30, seed=0, progress=False)
    model, result = train_hadskip(backbone, enc, data, data.label_map(), cfg)
    assert abs(result.executed_fraction - 0.5) <= 0.25 + 1e-9  # within one block of 4
    assert len(result.keep) == 2 and len(result.skipped) == 2
    g = np.array(result.mean_gate)
    assert ((g < 0.05) | (g > 0.95)).mean() >= 0.75  # the homotopy ended near binary gates
    assert result.history[-1]["temperature"] == pytest.approx(cfg.temperature_end)


def test_config_validation():
    with pytest.raises(ValueError, match="budget"):
        HadSkipConfig(budget=0)
    with pytest.raises(ValueError, match="temperature"):
        HadSkipConfig(temperature_start=0.1, temperature_end=1.0)


def test_soft_gates_at_one_equal_the_plain_model(tiny_model_dir):
    """The gated path through TopModel.block_runner is the model itself when every gate is open."""
    backbone, enc = load_model(tiny_model_dir("bert", layers=3), max_length=12)
    clf = SequenceClassifier(backbone, 3).eval()
    model = SkipClassifier(clf, adaptive=True).eval()
    ids, mask = (torch.from_numpy(a) for a in enc(["apple goal vote", "pear the"]))
    with torch.no_grad():
        model.gates.bias.fill_(40.0)  # sigmoid(40) == 1 in float32
        logits, gates = model(ids, mask)
        assert torch.allclose(gates, torch.ones_like(gates))
        assert torch.allclose(logits, clf(ids, mask), atol=1e-6)
        assert clf.top(0).block_runner is None  # a forward through the gates leaves the classifier plain


def test_hadskip_trains_on_the_shared_loop(tiny_model_dir, train_csv):
    """Warm-up/decay, clipping and the callback hooks: the trainer's history carries HadSkip's figures, the
    embeddings stay frozen, the gates move at their own rate."""
    backbone, enc = load_model(tiny_model_dir("bert", layers=3), max_length=16)
    data = load_dataset(train_csv)
    embeddings = {n: p.detach().clone() for n, p in backbone.model.named_parameters() if "embeddings" in n}
    cfg = HadSkipConfig(budget=0.67, epochs=2, batch_size=8, calibration_size=20, progress=False)
    model, result = train_hadskip(backbone, enc, data, data.label_map(), cfg)
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert {"loss", "seconds", "mean_gate", "temperature"} <= set(result.history[0])
    assert result.history[0]["temperature"] > result.history[1]["temperature"] == pytest.approx(0.05)
    assert result.config["warmup_ratio"] == cfg.warmup_ratio and result.config["max_grad_norm"] == 1.0
    assert embeddings and all(torch.equal(p, dict(backbone.model.named_parameters())[n]) for n, p in embeddings.items())
    assert model.classifier.backbone is backbone


def test_hadskip_resumes_from_its_checkpoint(tiny_model_dir, train_csv, tmp_path):
    """A run killed mid-way and started again ends where an uninterrupted run ends (gates included)."""
    model_dir, data = tiny_model_dir("bert", layers=3), load_dataset(train_csv)
    cfg = HadSkipConfig(budget=0.67, epochs=2, batch_size=8, calibration_size=20, checkpoint_steps=2)

    def run(out, callbacks=()):
        backbone, enc = load_model(model_dir, max_length=16)
        return hadskip_finetune((backbone, enc), data, out, cfg, progress=False, callbacks=callbacks)

    _, _, whole = run(tmp_path / "whole")
    with pytest.raises(Crash):
        run(tmp_path / "resumed", callbacks=[crash_at(5)])
    assert (tmp_path / "resumed" / "checkpoint").is_dir()
    _, _, resumed = run(tmp_path / "resumed")
    assert resumed.mean_gate == pytest.approx(whole.mean_gate, abs=1e-5)
    assert resumed.keep == whole.keep
    # the interrupted epoch's row covers the steps after the resume; the next epoch is the same run's
    assert resumed.history[0]["resumed"] and resumed.history[-1]["loss"] == pytest.approx(whole.history[-1]["loss"])
    assert not (tmp_path / "resumed" / "checkpoint").exists()  # the finished model replaced the run's files
