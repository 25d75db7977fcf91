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
    run_static,
    static_keep,
    temperature_at,
    train_hadskip,
)


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
    clf = SequenceClassifier(backbone, 3)
    cfg = HadSkipConfig(budget=0.5, epochs=3, batch_size=16, calibration_size=30, seed=0)
    model, result = train_hadskip(clf, enc, data, data.label_map(), cfg, progress=False)
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
