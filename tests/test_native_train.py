"""libedgetune_device personalizes as the Python device does: numpy's draws bit for bit (the guard and validation
splits and every epoch's order), the same training steps as the executorch backend (ExecuTorch's Python runtime
on the same program: step losses, validation accuracy, best epoch), the same candidate choice and guard
decision, and a personal state in the spec's format that Python reads, applies and predicts with as the library
does. Bad settings, unlabelled data and an output that is not a
personal state are refused before anything is written; a failed job leaves the previous state as it was."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from device_sim.backends import BackendError
from device_sim.backends.program import epoch_order
from device_sim.device import Device
from device_sim.native import (
    DRIVER,
    NativeError,
    NativeModel,
    NativePackage,
    library_path,
    personalize,
    personalize_texts,
)
from device_sim.settings import PersonalizeConfig
from device_sim.split import guard_split, validation_split
from edgetune.io import output_lock
from edgetune_format.personal import read_personal_state
from tests.conftest import write_csv
from tests.devices import user_data

pytestmark = [pytest.mark.timeout(900), pytest.mark.usefixtures("native_library")]

LEARNS = {"epochs": 6, "lr": 3e-3, "head_lr": 0.1}  # the tiny model learns the swapped labels in a few epochs


@pytest.fixture(scope="module")
def package(wordpiece_executorch_package):
    return wordpiece_executorch_package


def _user_csv(root, n):
    data = user_data(n, seed=4)
    return write_csv(root / f"user{n}.csv", list(zip(data.texts, data.labels)))


@pytest.fixture(scope="module")
def user_csv(tmp_path_factory):
    return _user_csv(tmp_path_factory.mktemp("user"), 80)


@pytest.fixture(scope="module")
def learning_csv(tmp_path_factory):
    """Enough of the user's data that the guard keeps what the tiny model learns (p ~ 5e-4 on 32 guard texts)."""
    return _user_csv(tmp_path_factory.mktemp("user"), 160)


def test_the_splits_and_epoch_orders_are_numpys_draws():
    """The library's draws (split_check, built beside the library) equal device_sim.split and numpy's
    permutations on 600 random cases: label counts, fractions, large seeds, unstratifiable labels."""
    rng = np.random.default_rng(0)
    lines, want = [], []
    for case in range(600):
        n, k = int(rng.integers(1, 120)), int(rng.integers(1, 6))
        labels = rng.integers(0, k, n)
        seed = int(rng.integers(0, 2**40)) if case % 5 == 0 else int(rng.integers(0, 100))
        fraction = float(rng.choice([0.05, 0.1, 0.15, 0.2, 0.25, 0.5]))
        kind = ("validation", "guard", "order")[case % 3]
        lines.append(f"{kind} {seed} {case % 7 if kind == 'order' else fraction} {' '.join(map(str, labels))}")
        if kind == "validation":
            held = validation_split(labels, fraction, seed)[1]
        elif kind == "guard":
            held = guard_split(labels, fraction, seed)[1]
        else:
            held = epoch_order(n, seed, case % 7)
        want.append(" ".join(map(str, held)))
    checker = library_path().parent / "split_check"
    got = subprocess.run([str(checker)], input="\n".join(lines) + "\n", capture_output=True, text=True, check=True)
    assert got.stdout.splitlines() == want


def _python_job(package, csv, out, head_only, select=False, **settings):
    config = PersonalizeConfig(
        select=select, progress=False, epochs=settings.get("epochs", 8), lr=settings.get("lr", 1e-4),
        head_lr=settings.get("head_lr", 3e-3), guard_fraction=settings.get("guard_fraction", 0.2),
        cut=3 if head_only else None, tuner=settings.get("tuner"),
    )  # fmt: skip
    with Device(package) as device:
        device.personalize(csv, out, config, backend="executorch")
    return json.loads((out / "personal.json").read_text())


@pytest.mark.parametrize(
    "head_only, select, settings",
    [
        (False, False, LEARNS),
        (True, False, LEARNS),
        (False, False, {"epochs": 3}),
        (False, False, {**LEARNS, "guard_fraction": 0.0}),
        (False, True, {"epochs": 3}),
        (False, False, {**LEARNS, "tuner": "lora"}),
    ],
    ids=["top", "head-only", "kept-global", "no-guard", "select", "lora"],
)
def test_the_library_trains_and_decides_as_the_python_device(package, user_csv, tmp_path, head_only, select, settings):
    with NativePackage(package) as native:
        result = personalize(
            native, user_csv, tmp_path / "native", head_only=head_only, select=int(select), threads=1, **settings
        )
    mine = json.loads((tmp_path / "native" / "personal.json").read_text())
    theirs = _python_job(package, user_csv, tmp_path / "python", head_only, select, **settings)
    assert [c["name"] for c in mine["selection"]["candidates"]] == [
        c["name"] for c in theirs["selection"]["candidates"]
    ]
    for got, want in zip(mine["selection"]["candidates"], theirs["selection"]["candidates"], strict=True):
        assert (got["val_accuracy"], got["best_epoch"], got["train_cut"]) == (
            want["val_accuracy"], want["best_epoch"], want["train_cut"]
        ), got["name"]  # fmt: skip
    assert mine["selection"]["chosen"] == theirs["selection"]["chosen"] == result["chosen_name"]
    assert [k["name"] for k in mine["selection"]["skipped"]] == [k["name"] for k in theirs["selection"]["skipped"]]
    for key in ("num_train", "num_val", "num_guard", "best_epoch", "stopped_early"):
        assert mine["training"][key] == theirs["training"][key], key
    np.testing.assert_allclose(mine["training"]["step_losses"], theirs["training"]["step_losses"], atol=1e-4)
    for got, want in zip(mine["training"]["history"], theirs["training"]["history"], strict=True):
        assert got.get("val_accuracy") == want.get("val_accuracy")
    assert mine["kind"] == theirs["kind"] and mine["train_cut"] == theirs["train_cut"]
    assert sorted(mine["tensors"]) == sorted(theirs["tensors"])
    for key in ("enabled", "kept", "reason", "keep_personal", "wins", "losses", "num_examples"):
        assert mine["guard"].get(key) == theirs["guard"].get(key), key
    assert bool(result["kept_personal"]) == (mine["kind"] == "top_delta")
    assert result["num_guard"] == mine["training"]["num_guard"]
    # Python reads and applies the library's state; both give the same logits with it
    state = read_personal_state(tmp_path / "native")
    texts = [t for t in user_data(30, seed=12).texts]
    with Device(package) as device:
        device.top(tmp_path / "native")  # the identity check passes
        want = np.array([p.logits for p in device.predictor(tmp_path / "native").predict(texts)], np.float32)
    with NativePackage(package) as native, NativeModel(native, tmp_path / "native", threads=1) as model:
        got = model.predict(texts)
    assert np.abs(got - want).max() <= 1e-4
    if state.kind == "top_delta":
        python_tensors = read_personal_state(tmp_path / "python").tensors
        for name, tensor in state.tensors.items():
            assert np.abs(tensor.numpy() - python_tensors[name].numpy()).max() <= 1e-3, name


def test_the_job_keeps_a_learning_user_and_refuses_bad_input(package, user_csv, learning_csv, tmp_path):
    with NativePackage(package) as native:
        kept = personalize(
            native, learning_csv, tmp_path / "state", threads=1, select=0, epochs=12, lr=3e-3, head_lr=0.1
        )
        assert kept["kept_personal"] == 1 and kept["guard_p_value"] < 0.05, kept
        before = (tmp_path / "state" / "personal.json").read_bytes()
        with pytest.raises(NativeError, match=r"guard_alpha must be in \(0, 1\).*\[argument\]"):
            personalize(native, user_csv, tmp_path / "state", guard_alpha=1.5)
        with pytest.raises(NativeError, match=r"epochs must be at least 1.*\[argument\]"):
            personalize(native, user_csv, tmp_path / "state", epochs=0)
        other = tmp_path / "notes"
        other.mkdir()
        (other / "keep.txt").write_text("mine")
        with pytest.raises(NativeError, match="not a personal state; refusing to replace it"):
            personalize(native, user_csv, other)
        assert (other / "keep.txt").read_text() == "mine"
        bad = write_csv(tmp_path / "bad.csv", [("some text", "alpha"), ("more", "not-a-label")])
        with pytest.raises(NativeError, match=r"not-a-label.*\[data\]"):
            personalize(native, bad, tmp_path / "state")
        assert (tmp_path / "state" / "personal.json").read_bytes() == before  # the old state is untouched
        replaced = personalize(native, user_csv, tmp_path / "state", threads=1, epochs=2, guard_fraction=0.0, select=0)
        assert replaced["kept_personal"] == 1 and read_personal_state(tmp_path / "state").kind == "top_delta"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no temporary or old directory stays beside the state


def test_an_apps_own_candidates_texts_and_progress_and_bad_ones(package, tmp_path):
    """edgetune_personalize_texts with the app's candidates: tried in order, priced and skipped as given, the
    progress of every step reported; bad candidates or labels are refused before anything is written."""
    data = user_data(60, seed=4)
    steps = []
    with NativePackage(package) as native:
        labels = [native.labels.index(label) for label in data.labels]
        candidates = [{"name": "prior", "prior": True}, {"name": "fast", "head_only": True, "head_lr": 0.1,
                                                         "estimated_seconds": 1.5}]  # fmt: skip
        skipped = [{"name": "big", "reason": "over the time budget (~90 s)"}]
        result = personalize_texts(
            native, data.texts, labels, tmp_path / "s", data_name="on-device", candidates=candidates,
            skipped=skipped, progress=lambda *step: steps.append(step), threads=1, epochs=2, guard_fraction=0.0,
        )  # fmt: skip
        state = json.loads((tmp_path / "s" / "personal.json").read_text())
        rows = state["selection"]["candidates"]
        assert [r["name"] for r in rows] == ["prior", "fast"] and result["num_candidates"] == 2
        assert rows[0]["estimated_device_seconds"] is None and rows[1]["estimated_device_seconds"] == 1.5
        assert state["selection"]["skipped"] == skipped and state["training"]["data"] == "on-device"
        assert result["chosen_name"] == state["selection"]["chosen"] == rows[result["chosen"]]["name"]
        trunk = [s for s in steps if s[0] == "trunk"]
        train = [s for s in steps if s[0] == "train"]
        assert trunk[-1][2:4] == (60, 60)
        assert {s[1] for s in train} == {"fast"} and len(train) == 2 * -(-result["num_train"] // 16)
        assert [s[2] for s in train] == list(range(1, len(train) + 1)) and all(np.isfinite(s[4]) for s in train)
        for bad, message in [
            ({"candidates": candidates * 2}, r"unique.*\[argument\]"),
            ({"candidates": [{"name": ""}]}, r"has no name.*\[argument\]"),
            ({"candidates": [{"name": "x", "lr": -1.0}]}, r"lr and head_lr must be >= 0"),
            ({"candidates": [{"name": "x", "tuner": "dsee"}]}, r"tuner 'dsee' \(the device trains full or lora\)"),
            ({"candidates": [{"name": "x", "tuner": "lora", "head_only": True}]}, r"head-only candidate has no tuner"),
            ({"select": 0, "tuner": "roselora"}, r"tuner 'roselora'.*\[argument\]"),
        ]:
            with pytest.raises(NativeError, match=message):
                personalize_texts(native, data.texts, labels, tmp_path / "bad", **bad)
        with pytest.raises(NativeError, match=r"label index 7; the package has 3 labels.*\[data\]"):
            personalize_texts(native, data.texts[:2], [0, 7], tmp_path / "bad")
        with pytest.raises(NativeError, match=r"no examples.*\[data\]"):
            personalize_texts(native, [], [], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_the_driver_personalizes_and_predicts_with_its_state(package, user_csv, learning_csv, tmp_path):
    driver = library_path().parent / DRIVER
    out = tmp_path / "state"
    ran = subprocess.run([str(driver), "personalize", "--package", str(package), "--data", str(learning_csv), "--out",
                          str(out), "--epochs", "12", "--no-select", "--lr", "3e-3", "--head-lr", "0.1", "--threads",
                          "1", "--quiet"], capture_output=True, text=True)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "kept the personal model" in ran.stdout and "guard: on 32 held-out examples" in ran.stdout
    assert read_personal_state(out).kind == "top_delta"
    chose = subprocess.run([str(driver), "personalize", "--package", str(package), "--data", str(learning_csv),
                            "--out", str(tmp_path / "selected"), "--epochs", "3", "--threads", "1", "--quiet"],
                           capture_output=True, text=True)  # fmt: skip
    assert chose.returncode == 0, chose.stderr
    selection = json.loads((tmp_path / "selected" / "personal.json").read_text())["selection"]
    assert f"chose {selection['chosen']} among 5 candidates" in chose.stdout
    assert [c["name"] for c in selection["candidates"]] == ["prior", "head", "head-fast", "lora", "block"]
    assert selection["skipped"] == []
    lora = subprocess.run([str(driver), "personalize", "--package", str(package), "--data", str(learning_csv), "--out",
                           str(tmp_path / "lora"), "--epochs", "12", "--tuner", "lora", "--lr", "3e-3", "--head-lr",
                           "0.1", "--threads", "1", "--quiet"], capture_output=True, text=True)  # fmt: skip
    assert lora.returncode == 0, lora.stderr
    assert "trained LoRA adapters in the top above the package's cut" in lora.stdout
    state = read_personal_state(tmp_path / "lora")
    if state.kind == "top_delta":  # the adapters, the final norm and the head; peft's names, the program's rank
        assert state.tuner["name"] == "lora" and state.tuner["params"]["r"] == 8
        assert any(".lora_A.default.weight" in n for n in state.tensors)
        assert all(".lora_" in n or n.startswith(("head.", "norm.")) for n in state.tensors)
    shown = subprocess.run([str(driver), "predict", "--package", str(package), "--personal", str(out), "--text",
                            "apple juice"], capture_output=True, text=True)  # fmt: skip
    assert shown.returncode == 0 and shown.stdout.strip() in ("alpha", "beta", "gamma")
    for argv, message in [
        (["--epochs", "0"], "--epochs must be a whole number of at least 1"),
        (["--lr", "fast"], "--lr must be a number"),
        (["--tuner", "dsee"], "--tuner: choose one of full, lora"),
    ]:
        bad = subprocess.run([str(driver), "personalize", "--package", str(package), "--data", str(user_csv),
                              "--out", str(tmp_path / "x"), *argv], capture_output=True, text=True)  # fmt: skip
        assert bad.returncode == 1 and message in bad.stderr
    missing = subprocess.run([str(driver), "personalize", "--package", str(package)], capture_output=True, text=True)
    assert missing.returncode == 1 and "--data (labelled texts) and --out" in missing.stderr
    assert not (tmp_path / "x").exists()
    shutil.rmtree(out)
    app = library_path().parent / "device_app"  # examples/device_app.c: personalize, then predict with the state
    ran = subprocess.run([str(app), str(package), str(learning_csv), str(out), "apple juice"], capture_output=True,
                         text=True)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "personalized on 109 texts" in ran.stdout and '"apple juice" -> ' in ran.stdout
    assert read_personal_state(out).kind in ("top_delta", "kept_global")


def _driver_job(package, data, out, *flags):
    driver = library_path().parent / DRIVER
    return [str(driver), "personalize", "--package", str(package), "--data", str(data), "--out", str(out),
            "--epochs", "5", "--threads", "1", "--quiet", *flags]  # fmt: skip


def test_a_job_killed_mid_training_resumes_where_it_stopped(package, learning_csv, tmp_path):
    """kill -9 while a candidate trains: the next run of the same job goes on from the finished candidates and the
    last epoch, and writes what an uninterrupted run writes; a job of other settings starts over."""
    import signal
    import time

    whole = subprocess.run(_driver_job(package, learning_csv, tmp_path / "whole"), capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    out, work = tmp_path / "state", tmp_path / ".state.partial"
    job = subprocess.Popen(_driver_job(package, learning_csv, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (work / "candidate-3.epoch").exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)  # the last candidate ("block") has finished an epoch: three records before it
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert job.returncode == -signal.SIGKILL, "the job ended before it could be killed"
    assert not out.exists() and (work / "candidate-1").is_file() and (work / "candidate-3.epoch").is_file()
    again = subprocess.run(_driver_job(package, learning_csv, out), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "resumed an interrupted run" in again.stdout and not work.exists()
    mine, theirs = (json.loads((d / "personal.json").read_text()) for d in (out, tmp_path / "whole"))
    assert mine["training"]["resumed"] and not theirs["training"]["resumed"]
    for key in ("kind", "tensors", "train_cut"):
        assert mine[key] == theirs[key], key
    for got, want in zip(mine["selection"]["candidates"], theirs["selection"]["candidates"], strict=True):
        assert (got["name"], got["val_accuracy"], got["best_epoch"], got["epochs_run"]) == (
            want["name"], want["val_accuracy"], want["best_epoch"], want["epochs_run"]
        )  # fmt: skip
    assert mine["training"]["step_losses"] == theirs["training"]["step_losses"]
    assert mine["guard"]["wins"] == theirs["guard"]["wins"] and mine["guard"]["losses"] == theirs["guard"]["losses"]
    if mine["kind"] == "top_delta":
        got, want = read_personal_state(out).tensors, read_personal_state(tmp_path / "whole").tensors
        assert all(np.array_equal(got[k].numpy(), want[k].numpy()) for k in got)
    # killed again, then run with other settings: the records of the first job are not used
    job = subprocess.Popen(_driver_job(package, learning_csv, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while not (work / "candidate-1").exists() and job.poll() is None:
        time.sleep(0.002)
    job.send_signal(signal.SIGKILL)
    job.wait()
    with output_lock(out):  # a job holds the output (edgetune's lock protocol): the driver does not start
        held = subprocess.run(_driver_job(package, learning_csv, out), capture_output=True, text=True)
    assert held.returncode == 2 and "another job is writing this output" in held.stderr
    other = subprocess.run(_driver_job(package, learning_csv, out, "--seed", "1"), capture_output=True, text=True)
    assert other.returncode == 0 and "resumed" not in other.stdout
    assert not json.loads((out / "personal.json").read_text())["training"]["resumed"]


def test_the_int8_trunk_personalizes_and_predicts(wordpiece_int8_package, package, user_csv, tmp_path):
    """trunk.int8.pte in the library: its logits near the fp32 trunk's, a job on its features (the driver's
    --precision int8, and the Python device's executorch-cpp backend with precision int8), and a clear refusal on
    a package exported without --int8."""
    texts = user_data(30, seed=12).texts
    with NativePackage(wordpiece_int8_package) as native:
        with NativeModel(native, threads=1) as fp32, NativeModel(native, threads=1, int8_trunk=True) as int8:
            want, got = fp32.predict(texts), int8.predict(texts)
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.1
        result = personalize(native, user_csv, tmp_path / "state", threads=1, epochs=2, int8_trunk=1)
    state = json.loads((tmp_path / "state" / "personal.json").read_text())
    assert state["training"]["config"]["precision"] == "int8" and result["num_train"] == state["training"]["num_train"]
    driver = library_path().parent / DRIVER
    shown = subprocess.run([str(driver), "predict", "--package", str(wordpiece_int8_package), "--personal",
                            str(tmp_path / "state"), "--precision", "int8", "--text", "apple juice"],
                           capture_output=True, text=True)  # fmt: skip
    assert shown.returncode == 0 and shown.stdout.strip() in ("alpha", "beta", "gamma"), shown.stderr
    config = PersonalizeConfig(epochs=2, precision="int8", progress=False)
    with Device(wordpiece_int8_package) as device:
        done = device.personalize(user_csv, tmp_path / "python", config, backend="executorch-cpp")
    assert done.manifest["training"]["config"]["precision"] == "int8"
    refused = subprocess.run([str(driver), "predict", "--package", str(package), "--precision", "int8", "--text",
                              "apple juice"], capture_output=True, text=True)  # fmt: skip
    assert refused.returncode == 2 and "no int8 trunk program" in refused.stderr and "--int8" in refused.stderr
    with Device(package) as device, pytest.raises(BackendError, match="no int8 trunk program"):
        device.personalize(user_csv, tmp_path / "none", config, backend="executorch-cpp")
    assert not (tmp_path / "none").exists()
