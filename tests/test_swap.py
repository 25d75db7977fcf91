"""Backbone swap on the device: FaLA, retrain and head-only personal states for a new package, and rollback."""

import json

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from device_sim.device import Device
from device_sim.swap import SwapConfig, SwapError, head_backward_flops, swap
from edgetune.data import DataError, TextDataset
from edgetune.fala import FalaHead, PersonalMatrix, compose
from edgetune_format.personal import read_personal_state
from tests.devices import export_derived_package, export_probe_package, fast, user_data


@pytest.fixture(scope="module")
def fleet(swap_packages, tmp_path_factory):
    """The swap packages (conftest.swap_packages: d_old != d_new) and a user's personal state on the old one."""
    root = tmp_path_factory.mktemp("swap")
    old, new = swap_packages["old"], swap_packages["new"]
    data = user_data(120, seed=3)
    with Device(old, threads=1) as device:
        device.personalize(data, root / "personal", fast())
    return {"old": old, "new": new, "personal": root / "personal", "data": data, "test": user_data(60, seed=4)}


def _accuracy(package, personal, data) -> float:
    with Device(package, threads=1) as device:
        return device.evaluate(data, personal)["accuracy"]


def test_fala_carries_the_personalization_to_a_wider_backbone(fleet, tmp_path):
    out = tmp_path / "personal-new"
    config = SwapConfig(fraction=0.2, tune_epochs=50, tune_lr=1e-2)
    result = swap(fleet["old"], fleet["new"], fleet["personal"], fleet["data"], out, config, threads=1)
    state = read_personal_state(out)
    assert state.kind == "fala" and result.method == "fala"
    assert state.tensors["matrix.linear.weight"].shape == (32, 48)  # new (48) -> old (32) features
    assert result.examples_used == 24 == len(result.selected) and result.num_examples == 120
    assert result.details["d_new"] == 48 and result.details["d_old"] == 32
    # the state predicts with the old personal head after W, on the new package's features
    with Device(fleet["new"], threads=1) as device:
        features = torch.as_tensor(device.features(fleet["test"].texts[:8]))
        logits = torch.as_tensor(device.predict_logits(fleet["test"].texts[:8], out))
    head = FalaHead.from_state(state.tensors)
    assert torch.allclose(head(features), logits, atol=1e-4)
    assert result.flops_reduction > 1000
    # the old pair is untouched and still works
    assert _accuracy(fleet["old"], fleet["personal"], fleet["test"]) > 0.6


def test_fala_recovers_the_personal_labels_on_a_derived_backbone(tiny_model_dir, tmp_path):
    """New backbone = the old one without its top block (features of another block); users swap two labels."""
    model = tiny_model_dir("bert", layers=4)
    old = export_probe_package(model, tmp_path / "old")
    new, _ = export_derived_package(model, tmp_path)
    data, test = user_data(150, seed=3), user_data(90, seed=4)
    with Device(old, threads=1) as device:
        device.personalize(data, tmp_path / "personal", fast())
    config = SwapConfig(tune_lr=1e-2, map_on="curated")  # the abstract's reading: W from the 15 curated examples
    swap(old, new, tmp_path / "personal", data, tmp_path / "fala", config, threads=1)
    fala, global_new = _accuracy(new, tmp_path / "fala", test), _accuracy(new, None, test)
    assert fala > global_new + 0.15  # the swapped labels are learnt from 15 examples, without re-training
    # the default: W from all 150 texts (unlabelled), tuned on the same 15 labelled ones
    swap(old, new, tmp_path / "personal", data, tmp_path / "fala-all", SwapConfig(tune_lr=1e-2), threads=1)
    assert _accuracy(new, tmp_path / "fala-all", test) > global_new + 0.1


def test_retrain_and_head_only(fleet, tmp_path):
    retrain = swap(
        fleet["old"], fleet["new"], fleet["personal"], fleet["data"], tmp_path / "r",
        SwapConfig(method="retrain", personalize=fast()), threads=1,
    )  # fmt: skip
    head = swap(
        fleet["old"], fleet["new"], fleet["personal"], fleet["data"], tmp_path / "h",
        SwapConfig(method="head-only", fraction=0.2, personalize=fast()), threads=1,
    )  # fmt: skip
    assert retrain.examples_used == 120 and head.examples_used == 24
    assert read_personal_state(tmp_path / "h").train_cut == 3  # head only: above the last block
    assert head.backward_flops < retrain.backward_flops < retrain.full_retrain_backward_flops
    assert _accuracy(fleet["new"], tmp_path / "r", fleet["test"]) > 0.6


def test_head_only_trains_the_head_as_configured_under_a_selecting_job(fleet, tmp_path):
    """k curated examples are too few to choose between candidates: head-only trains the head alone even when
    the swap's job selects (as re-training does: the device's default job)."""
    job = fast(select=True, guard_fraction=0.0)
    swap(
        fleet["old"], fleet["new"], fleet["personal"], fleet["data"], tmp_path / "h",
        SwapConfig(method="head-only", fraction=0.2, personalize=job), threads=1,
    )  # fmt: skip
    state = read_personal_state(tmp_path / "h")
    assert state.train_cut == 3 and [c["name"] for c in state.manifest["selection"]["candidates"]] == ["configured"]


def test_k_larger_than_the_data_uses_every_example(fleet, tmp_path):
    small = fleet["data"].subset(range(9))
    result = swap(fleet["old"], fleet["new"], fleet["personal"], small, tmp_path / "p", SwapConfig(k=50), threads=1)
    assert result.selected == list(range(9))


def test_all_one_label(fleet, tmp_path):
    data = fleet["data"]
    one = data.subset([i for i, y in enumerate(data.labels) if y == data.labels[0]])
    result = swap(fleet["old"], fleet["new"], fleet["personal"], one, tmp_path / "p", SwapConfig(k=5), threads=1)
    assert result.examples_used == 5
    with Device(fleet["new"], threads=1) as device:
        assert set(device.predict(one.texts[:10], tmp_path / "p")) <= set(device.labels)


def test_corrupt_new_package_rolls_back(fleet, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(fleet["new"], broken)
    with open(broken / "trunk.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\x00" * 16)
    before = _accuracy(fleet["old"], fleet["personal"], fleet["test"])
    out = tmp_path / "out"
    with pytest.raises(SwapError, match="new package: .*trunk.onnx"):
        swap(fleet["old"], broken, fleet["personal"], fleet["data"], out, threads=1)
    assert not out.exists()
    assert _accuracy(fleet["old"], fleet["personal"], fleet["test"]) == before


def test_failure_mid_swap_leaves_no_output(fleet, tmp_path, monkeypatch):
    import device_sim.swap as swap_module

    def boom(*args, **kwargs):
        raise ValueError("ridge failed")

    monkeypatch.setattr(swap_module.PersonalMatrix, "fit", boom)
    out = tmp_path / "out"
    with pytest.raises(SwapError, match="ridge failed; nothing was swapped"):
        swap(fleet["old"], fleet["new"], fleet["personal"], fleet["data"], out, threads=1)
    assert not out.exists()


def test_refusals(fleet, tmp_path):
    with pytest.raises(SwapError, match="is the old personal state"):
        swap(fleet["old"], fleet["new"], fleet["personal"], fleet["data"], fleet["personal"], threads=1)
    with pytest.raises(SwapError, match="personal state"):  # a state that belongs to another package
        swap(fleet["new"], fleet["old"], fleet["personal"], fleet["data"], tmp_path / "x", threads=1)
    bad = TextDataset(["some text"], ["unknown-label"], source="user.csv")
    with pytest.raises(DataError, match="unknown-label"):
        swap(fleet["old"], fleet["new"], fleet["personal"], bad, tmp_path / "y", threads=1)
    with pytest.raises(ValueError, match="method must be one of"):
        SwapConfig(method="magic")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_second_swap_folds_the_matrices():
    torch.manual_seed(0)
    first = FalaHead(PersonalMatrix(6, 4), torch.nn.Linear(4, 3))
    second = PersonalMatrix(5, 6)
    folded = compose(second, first)
    assert folded.matrix.linear.weight.shape == (4, 5)
    x = torch.randn(7, 5)
    assert torch.allclose(folded(x), first(second(x)), atol=1e-5)


def test_head_backward_flops_match_the_profiler():
    head = FalaHead(PersonalMatrix(48, 32), torch.nn.Linear(32, 5))
    x = torch.randn(8, 48)  # cached features: no gradient
    loss = torch.nn.functional.cross_entropy(head(x), torch.zeros(8, dtype=torch.long))
    with FlopCounterMode(display=False) as counter:
        loss.backward()
    assert counter.get_total_flops() == pytest.approx(8 * head_backward_flops(48, 32, 5), rel=0.01)


def test_fala_state_is_refused_by_another_package(fleet, tmp_path):
    out = tmp_path / "p"
    swap(fleet["old"], fleet["new"], fleet["personal"], fleet["data"], out, SwapConfig(tune_epochs=0), threads=1)
    manifest = json.loads((out / "personal.json").read_text())
    assert manifest["kind"] == "fala" and manifest["tuner"]["name"] == "fala"
    with Device(fleet["old"], threads=1) as device, pytest.raises(Exception, match="another package"):
        device.top(out)
    assert np.isfinite(_accuracy(fleet["new"], out, fleet["test"]))


def test_a_kept_global_state_swaps_as_the_global_head(fleet, tmp_path):
    """A user whose personalization the guard refused carries the old *global* head across the swap."""
    broken = fast(guard_fraction=0.25, lr=30.0, head_lr=300.0, max_grad_norm=None, warmup_ratio=0.0, patience=None)
    kept = tmp_path / "kept"
    with Device(fleet["old"], threads=1) as device:
        assert device.personalize(user_data(150, seed=3, swap=False), kept, broken).kept == "global"
    out = tmp_path / "personal-new"
    swap(fleet["old"], fleet["new"], kept, fleet["data"], out, SwapConfig(fraction=0.2, tune_epochs=0), threads=1)
    state = read_personal_state(out)
    assert state.kind == "fala"
    with Device(fleet["old"], threads=1) as device:
        assert torch.equal(state.tensors["head.weight"], device.package.top_model().head.weight)
