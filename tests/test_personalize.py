"""On-device personalization: learning, resume after a crash, bad data, profile refusal, the personal state."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from device_sim.device import Device
from device_sim.personalize import work_dir
from device_sim.profiles import DeviceProfile, ProfileError
from edgetune.data import DataError
from edgetune.train import TrainError
from edgetune_format.personal import PersonalStateError, read_personal_state
from tests.conftest import Crash, crash_at, kill_at_marker, write_csv
from tests.devices import fast, user_data

UNLIMITED = DeviceProfile("unlimited", threads=1, memory_mb=1e6, time_budget_s=1e6, gflops=10)


@pytest.fixture()
def device(device_packages):
    with Device(device_packages["main"], threads=1) as dev:
        yield dev


def _same(a: dict, b: dict, atol: float = 1e-6) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol) for k in a)


def test_personalization_learns_the_users_labels(device, tmp_path):
    test = user_data(60, seed=4)
    global_acc = device.evaluate(test)["accuracy"]
    result = device.personalize(user_data(120, seed=3), tmp_path / "personal", fast())
    personal_acc = device.evaluate(test, tmp_path / "personal")["accuracy"]
    assert personal_acc >= global_acc + 0.25, (global_acc, personal_acc)
    # only what training changed: blocks 2..3 and the head, never the trunk (embeddings, block 1)
    names = set(load_file(str(tmp_path / "personal" / "delta.safetensors")))
    top = device.package.top_model()
    assert names == {n for n, _ in top.named_parameters()}
    assert result.num_train + result.num_val == 120 and result.num_val == 18
    assert result.best_epoch is not None and result.val_metrics["accuracy"] >= 0.5
    assert not work_dir(tmp_path / "personal").exists()
    m = json.loads((tmp_path / "personal" / "personal.json").read_text())
    assert m["package"]["cut"] == 1 and m["train_cut"] == 1 and m["tuner"]["name"] == "full"
    assert m["package"]["backbone_hash"] == device.package.manifest["backbone"]["hash"]
    assert m["training"]["estimate"]["backward_frac"] < 1.0


def test_resume_after_a_crash_matches_an_uninterrupted_run(device, tmp_path):
    data = user_data(120, seed=3)
    whole = device.personalize(data, tmp_path / "whole", fast(checkpoint_steps=2))
    out = tmp_path / "personal"
    device.personalize(user_data(60, seed=8), out, fast(epochs=1))  # an older personal state
    before = (out / "delta.safetensors").read_bytes()
    with pytest.raises(Crash):
        device.personalize(
            data, out, fast(checkpoint_steps=2), callbacks=[crash_at(11)]
        )  # checkpoint at step 10, mid epoch 2
    assert (out / "delta.safetensors").read_bytes() == before  # the previous state still stands
    assert (work_dir(out) / "checkpoint" / "state.json").is_file()
    resumed = device.personalize(data, out, fast(checkpoint_steps=2))
    assert resumed.resumed and any(h["resumed"] for h in resumed.history)
    assert _same(read_personal_state(out).tensors, read_personal_state(tmp_path / "whole").tensors)
    assert [h["val_accuracy"] for h in resumed.history] == [h["val_accuracy"] for h in whole.history]
    assert not work_dir(out).exists()


def test_an_interrupted_job_of_other_data_is_discarded(device, tmp_path):
    out = tmp_path / "personal"
    with pytest.raises(Crash):
        device.personalize(user_data(120, seed=3), out, fast(), callbacks=[crash_at(9)])
    result = device.personalize(user_data(120, seed=5), out, fast(epochs=2))
    assert not result.resumed and len(result.history) == 2


KILLED_JOB = """
import sys, time
from pathlib import Path
from device_sim.device import Device
from tests.devices import fast, user_data

package, out, marker = map(Path, sys.argv[1:4])

def slow(event):  # after step 9 (checkpointed at 8), wait there to be killed: no race with the job's end
    if event.global_step == 9:
        marker.write_text("checkpointed at step 8")
        time.sleep(600)

with Device(package, threads=1) as device:
    device.personalize(user_data(120, seed=3), out, fast(checkpoint_steps=4), callbacks=[slow])
"""


def test_a_killed_job_keeps_the_previous_state_and_resumes(device, device_packages, tmp_path):
    out, marker = tmp_path / "personal", tmp_path / "marker"
    device.personalize(user_data(60, seed=8), out, fast(epochs=1))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "EDGETUNE_NO_PROGRESS": "1"}
    args = [sys.executable, "-c", KILLED_JOB, str(device_packages["main"]), str(out), str(marker)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    kill_at_marker(proc, marker, "the job")  # the marker: it has checkpointed
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    read_personal_state(out).check_package(device.package)
    result = device.personalize(user_data(120, seed=3), out, fast(checkpoint_steps=4))
    assert result.resumed
    reference = device.personalize(user_data(120, seed=3), tmp_path / "reference", fast(checkpoint_steps=4))
    assert _same(read_personal_state(out).tensors, read_personal_state(reference.path).tensors, atol=1e-5)


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        ([("apple juice", "alpha"), ("vote law", "delta")], ("text", "label"), r"row 3: label 'delta' was not seen"),
        ([], None, r"file is empty"),
        ([("apple juice", "alpha")], ("body", "topic"), r"row 2: missing columns 'text' and 'label'"),
        ([], ("text", "label"), r"header but no rows"),
        ([("apple juice", "")], ("text", "label"), r"row 2: empty label"),
    ],
)
def test_bad_user_data_is_a_clear_error_and_loses_nothing(device, tmp_path, rows, header, message):
    out = tmp_path / "personal"
    device.personalize(user_data(60, seed=8), out, fast(epochs=1))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = tmp_path / "bad.csv"
    if header is None:
        bad.write_text("")
    else:
        write_csv(bad, rows, header)
    with pytest.raises(DataError, match=message):
        device.personalize(bad, out, fast())
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "personal"]  # no work directory either


def test_out_that_is_not_a_personal_state_is_never_overwritten(device, tmp_path):
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "holiday.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(PersonalStateError, match="refusing to overwrite"):
        device.personalize(user_data(60, seed=3), precious, fast())
    assert [p.name for p in precious.iterdir()] == ["holiday.jpg"]


def test_profile_refuses_a_job_that_does_not_fit_and_a_higher_cut_runs(device_packages, tmp_path):
    data = user_data(120, seed=3)
    with Device(device_packages["main"], threads=1) as free:
        in_memory = free.personalize(data, tmp_path / "a", fast(epochs=1, cache="memory")).estimate.train_memory_mb
        mapped = free.personalize(data, tmp_path / "b", fast(epochs=1, cache="mmap")).estimate.train_memory_mb
    assert mapped < in_memory
    roomy = DeviceProfile("roomy", threads=1, memory_mb=(mapped + in_memory) / 2, time_budget_s=1e6, gflops=10)
    with Device(device_packages["main"], profile=roomy) as device:  # the cache does not fit in memory: mapped
        assert device.personalize(data, tmp_path / "c", fast(epochs=1)).cache == "mmap"
    tight = DeviceProfile("tight", threads=1, memory_mb=0.9 * mapped, time_budget_s=1e6, gflops=10)
    out = tmp_path / "personal"
    with Device(device_packages["main"], profile=tight) as device:
        with pytest.raises(ProfileError, match=r"profile 'tight': training above cut 1 needs ~\d+ MB") as err:
            device.personalize(data, out, fast())
        assert "a higher cut fits: " in str(err.value) and err.value.suggested_cut in (2, 3)
        assert not out.exists() and not work_dir(out).exists()
        result = device.personalize(data, out, fast(cut=err.value.suggested_cut))
        assert result.train_cut == err.value.suggested_cut and result.estimate.train_memory_mb <= tight.memory_mb
        # blocks between the package's cut and the device's stay as shipped; the ones above are trained
        base, personal = device.top(), device.top(out)
        frozen = result.train_cut - 1
        for i, (b, p) in enumerate(zip(base.blocks, personal.blocks)):
            same = all(torch.equal(x, y) for x, y in zip(b.state_dict().values(), p.state_dict().values()))
            assert same == (i < frozen), i
        assert not torch.equal(base.head.weight, personal.head.weight)
    slow = DeviceProfile("slow", threads=1, memory_mb=1e6, time_budget_s=1e-3, gflops=0.01)
    with Device(device_packages["main"], profile=slow) as device, pytest.raises(ProfileError, match=r"s > 0 s"):
        device.personalize(data, out, fast())


def test_impossible_settings_are_refused_before_any_work(device, tmp_path):
    with pytest.raises(TrainError, match="trunk ends at block 1"):
        device.personalize(user_data(60, seed=3), tmp_path / "p", fast(cut=0))
    with pytest.raises(TrainError, match=r"LoRA layers \[2\] are not among the trained blocks \[3\]"):
        device.personalize(
            user_data(60, seed=3), tmp_path / "p", fast(cut=2, tuner="lora", tuner_params={"layers": [2]})
        )
    with pytest.raises(TrainError, match="unknown tuner 'rose'"):
        device.personalize(user_data(60, seed=3), tmp_path / "p", fast(tuner="rose"))
    assert list(tmp_path.iterdir()) == []


def test_lora_state_holds_only_adapters_and_head(device, tmp_path):
    test = user_data(60, seed=4)
    result = device.personalize(
        user_data(120, seed=3), tmp_path / "lora", fast(tuner="lora", lr=3e-2, head_lr=5e-2, epochs=10)
    )
    state = read_personal_state(tmp_path / "lora")
    assert state.tuner["name"] == "lora" and set(state.tensors) == {
        n for n in state.tensors if "lora_" in n or n.startswith("head.")
    }
    assert any("lora_" in n for n in state.tensors) and result.trainable_params == state.manifest["num_params"]
    full_params = sum(p.numel() for p in device.package.top_model().parameters())
    assert state.manifest["num_params"] < 0.2 * full_params
    top = device.top(tmp_path / "lora")
    assert not any("lora" in name for name, _ in top.named_modules())  # adapters merged into plain weights
    assert device.evaluate(test, tmp_path / "lora")["accuracy"] >= device.evaluate(test)["accuracy"] + 0.3


def test_personal_state_is_tied_to_its_package(device_packages, device, tmp_path):
    out = tmp_path / "personal"
    device.personalize(user_data(60, seed=3), out, fast(epochs=1))
    with Device(device_packages["other"], threads=1) as other:
        with pytest.raises(PersonalStateError, match="belongs to another package .*differs in: backbone_hash"):
            other.predict(["apple"], out)
    with pytest.raises(PersonalStateError, match="a device package, not a personal state"):
        device.top(device_packages["main"])
    with pytest.raises(PersonalStateError, match="no such personal state"):
        device.top(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: _flip_byte(p / "delta.safetensors"), r"delta\.safetensors: sha256 does not match"),
        (lambda p: (p / "delta.safetensors").write_bytes(b"x"), r"delta\.safetensors: 1 bytes, personal\.json says"),
        (lambda p: (p / "delta.safetensors").unlink(), r"delta\.safetensors missing"),
        (lambda p: _edit(p, lambda m: m.update(train_cut=2)), r"does not match its integrity hash"),
        (lambda p: _edit(p, lambda m: m.update(schema_version=2), reseal=True), r"schema version 2 is not supported"),
        (lambda p: (p / "personal.json").write_text("{"), r"personal\.json: not valid JSON"),
    ],
)
def test_a_damaged_personal_state_is_a_clear_error(device, tmp_path, damage, message):
    out = tmp_path / "personal"
    device.personalize(user_data(60, seed=3), out, fast(epochs=1))
    damage(out)
    with pytest.raises(PersonalStateError, match=message):
        device.predict(["apple"], out)


def _flip_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit(path, edit, reseal: bool = False) -> None:
    from edgetune_format.manifest import seal

    m = json.loads((path / "personal.json").read_text())
    edit(m)
    (path / "personal.json").write_text(json.dumps(seal(m) if reseal else m))


def test_streaming_answers_match_the_batch(device, tmp_path):
    device.personalize(user_data(60, seed=3), tmp_path / "personal", fast(epochs=2))
    texts = [t for t in user_data(12, seed=9).texts] + ["apple", "goal match team league score and the fruit"]
    predictor = device.predictor(tmp_path / "personal")
    batch = predictor.predict(texts, batch_size=5)
    streamed = list(predictor.stream(iter(texts)))
    assert [p.label for p in streamed] == [p.label for p in batch]
    assert np.allclose([p.confidence for p in streamed], [p.confidence for p in batch], atol=1e-5)
    assert all(abs(sum(p.scores.values()) - 1) < 1e-5 for p in streamed)


def test_device_without_personal_state_predicts_like_the_package(device, device_packages):
    texts = user_data(10, seed=2).texts
    want = device.package.predict_logits(texts)
    assert np.allclose(device.predict_logits(texts), want, atol=1e-5)
    copy = shutil.copytree(device_packages["main"], device_packages["main"].parent / "copy", dirs_exist_ok=True)
    with Device(copy) as same:  # a byte-identical copy elsewhere is the same package
        assert same.labels == device.labels


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_a_higher_cut_inside_the_top_composes(family):
    """Blocks cut+1..K run frozen, then the view above K: the same logits as the whole top."""
    from edgetune.backbones import Backbone
    from edgetune.modeling import SequenceClassifier
    from tests.conftest import build_model

    clf = SequenceClassifier(Backbone(build_model(family, layers=4)), 3).eval()
    top = clf.detached_top(1).eval()
    hidden, mask = torch.randn(2, 7, 32), torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    with torch.no_grad():
        whole = top(hidden, mask)
        for k in (1, 2, 4):
            view = top.above(k)
            assert view.cut == k and len(view.blocks) == 4 - k and view.head is top.head
            assert torch.allclose(view(top.hidden_at(hidden, mask, k), mask), whole, atol=1e-5)
    with pytest.raises(ValueError, match="cut must be in 1..4"):
        top.above(0)
