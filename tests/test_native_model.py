"""libedgetune_device predicts: the package's ExecuTorch programs (trunk.pte, top.pte) in the C library give the
logits of the Python device (within 1e-4, the same labels) for the global model and every personal state kind it
applies; the driver's ``predict`` and ``evaluate`` answer as ``edgetune predict`` and ``edgetune evaluate`` do;
and bad input (a state of another package, a tampered state, a package without the programs, null pointers,
impossible lengths) is an error code and a message, never a crash."""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess

import numpy as np
import pytest
from typer.testing import CliRunner

from device_sim.device import Device
from device_sim.native import DRIVER, NativeError, NativeModel, NativePackage, library_path, load_library
from edgetune_cli import app
from exporters.export import ExportOptions, export_package
from tests.conftest import synthetic_rows, write_csv
from tests.devices import STATE_KINDS, make_state
from tests.packages import dataset, make_checkpoint, make_plan

pytestmark = [pytest.mark.timeout(900), pytest.mark.usefixtures("native_library")]

APPLIED = ["full", "head-only", "lora", "fala", "fala-residual", "kept_global"]  # what the library applies
TEXTS = [t for t, _ in synthetic_rows(40, seed=9)] + ["", 'naïve café, "quoted"\nsecond line', "ok " * 200]


@pytest.fixture(scope="module")
def package(wordpiece_executorch_package):
    return wordpiece_executorch_package


@pytest.fixture(scope="module")
def states(package, tmp_path_factory):
    root = tmp_path_factory.mktemp("native-states")
    with Device(package) as device:
        return {kind: make_state(device, kind, root / kind) for kind in STATE_KINDS}


def python_logits(package, personal, texts):
    with Device(package) as device:
        return np.array([p.logits for p in device.predictor(personal).predict(texts)], np.float32)


@pytest.mark.parametrize("kind", ["global", *APPLIED])
def test_the_library_gives_the_python_devices_logits(package, states, kind):
    personal = None if kind == "global" else states[kind]
    want = python_logits(package, personal, TEXTS)
    with NativePackage(package) as native, NativeModel(native, personal, threads=1) as model:
        got = model.predict(TEXTS)
        ids, mask = native.encode(TEXTS)
        from_ids = model.logits(ids, mask)
        assert model.state_kind == {"global": "global", "kept_global": "kept_global"}.get(
            kind, "fala" if kind.startswith("fala") else "top_delta"
        )
    assert np.abs(got - want).max() <= 1e-4 and np.abs(from_ids - want).max() <= 1e-4
    assert (got.argmax(1) == want.argmax(1)).all()
    if kind not in ("global", "kept_global"):  # the state changed something
        assert np.abs(python_logits(package, None, TEXTS) - got).max() > 1e-3


@pytest.mark.parametrize("kind", ["roselora", "dsee"])
def test_states_the_library_does_not_apply_are_unsupported(package, states, kind):
    with (
        NativePackage(package) as native,
        pytest.raises(NativeError, match=r"not applied by this library.*\[unsupported\]"),
    ):
        NativeModel(native, states[kind])


def test_a_state_of_another_package_or_a_tampered_one_is_refused(package, states, tmp_path, tiny_model_dir):
    other = tmp_path / "other-package"
    export_package(make_checkpoint(tiny_model_dir("bert"), tmp_path / "ckpt"), make_plan(tiny_model_dir("bert")),
                   other, data=dataset(60, seed=5), options=ExportOptions(threads=1))  # fmt: skip
    with Device(other) as device:
        foreign = make_state(device, "head-only", tmp_path / "foreign")
    with NativePackage(package) as native:
        with pytest.raises(NativeError, match=r"belongs to another package.*\[data\]"):
            NativeModel(native, foreign)
        tampered = shutil.copytree(states["full"], tmp_path / "tampered")
        raw = bytearray((tampered / "delta.safetensors").read_bytes())
        raw[-1] ^= 0x01
        (tampered / "delta.safetensors").write_bytes(bytes(raw))
        with pytest.raises(NativeError, match=r"delta.safetensors: sha256 does not match.*\[format\]"):
            NativeModel(native, tampered)
        edited = shutil.copytree(states["full"], tmp_path / "edited")
        doc = json.loads((edited / "personal.json").read_text())
        doc["train_cut"] += 1
        (edited / "personal.json").write_text(json.dumps(doc))
        with pytest.raises(NativeError, match=r"does not match its integrity hash.*\[format\]"):
            NativeModel(native, edited)
        with pytest.raises(NativeError, match=r"personal.json missing \(a device package.*\[format\]"):
            NativeModel(native, package)
        with pytest.raises(NativeError, match=r"no such personal state.*\[io\]"):
            NativeModel(native, tmp_path / "absent")
    with (
        NativePackage(other) as onnx_only,
        pytest.raises(NativeError, match=r"no ExecuTorch programs.*\[unsupported\]"),
    ):
        NativeModel(onnx_only)


def test_bad_arguments_are_errors_not_crashes(package):
    lib = load_library()
    handle = ctypes.c_void_p()
    assert lib.edgetune_model_open(None, None, 0, 0, ctypes.byref(handle)) == 1  # argument
    assert "package is NULL" in lib.edgetune_last_error().decode()
    with NativePackage(package) as native:
        assert lib.edgetune_model_open(native._handle, None, -1, 0, ctypes.byref(handle)) == 1
        assert lib.edgetune_model_open(native._handle, None, 0, 0, None) == 1
        with NativeModel(native) as model:
            ids, mask = native.encode(["one text", "two"])
            with pytest.raises(NativeError, match=r"length 0 is not in.*\[argument\]"):
                model.logits(ids, np.zeros_like(mask))
            assert lib.edgetune_model_logits(model._handle, None, None, 2, 4, None) == 1
            assert lib.edgetune_model_predict(None, None, None, 0, None) == 1
            assert model.predict([]).shape == (0, len(native.labels))
    assert lib.edgetune_model_state_kind(None) is None


def _driver():
    return library_path().parent / DRIVER


def test_the_driver_predicts_and_evaluates_as_edgetune_does(package, states, tmp_path):
    rows = synthetic_rows(30, seed=11)
    data = write_csv(tmp_path / "test.csv", rows)
    runner = CliRunner()
    for personal in (None, states["full"], states["kept_global"]):
        extra = [] if personal is None else ["--personal", str(personal)]
        ran = subprocess.run([str(_driver()), "predict", "--package", str(package), "--data", str(data),
                              "--format", "jsonl", "--logits", "--threads", "1", *extra],
                             capture_output=True, text=True)  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        python = runner.invoke(app, ["predict", "--package", str(package), "--data", str(data), "--format", "jsonl",
                                     "--logits", "--runtime", "onnx", *extra])  # fmt: skip
        assert python.exit_code == 0, python.output
        mine = [json.loads(line) for line in ran.stdout.splitlines()]
        theirs = [json.loads(line) for line in python.stdout.splitlines() if line.startswith("{")]
        assert [r["label"] for r in mine] == [r["label"] for r in theirs] and len(mine) == len(rows)
        assert [r["text"] for r in mine] == [t for t, _ in rows]
        assert np.abs(np.array([r["logits"] for r in mine]) - np.array([r["logits"] for r in theirs])).max() <= 1e-4
        out = tmp_path / "metrics.json"
        ran = subprocess.run([str(_driver()), "evaluate", "--package", str(package), "--data", str(data),
                              "--out", str(out), "--quiet", *extra], capture_output=True, text=True)  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        mine = json.loads(out.read_text())
        assert runner.invoke(app, ["evaluate", "--package", str(package), "--data", str(data), "--out",
                                   str(tmp_path / "py.json"), "--quiet", *extra]).exit_code == 0  # fmt: skip
        theirs = json.loads((tmp_path / "py.json").read_text())
        for key in ("accuracy", "macro_f1", "num_examples", "per_label_f1"):
            assert mine[key] == pytest.approx(theirs[key]), key
        assert f"on {len(rows)} examples" in ran.stdout


def test_the_driver_writes_a_csv_atomically_and_refuses_bad_input(package, states, tmp_path):
    texts = [*TEXTS[-2:], "plain"]  # quotes, a comma and a line break; past max_length; plain
    data = write_csv(tmp_path / "texts.csv", [(t, "alpha") for t in texts])
    out = tmp_path / "preds.csv"
    ran = subprocess.run([str(_driver()), "predict", "--package", str(package), "--data", str(data), "--out",
                          str(out)], capture_output=True, text=True)  # fmt: skip
    assert ran.returncode == 0 and "wrote 3 predictions" in ran.stderr
    import csv

    with out.open(newline="") as f:
        read = list(csv.reader(f))
    assert read[0] == ["text", "label", "confidence"] and [r[0] for r in read[1:]] == texts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.csv", "texts.csv"]  # no temporary file left
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    cases = [
        (["predict", "--package", str(package), "--data", str(empty)], 2, "empty"),
        (["predict", "--package", str(package)], 1, "give --data FILE or --text TEXT"),
        (["predict", "--package", str(package), "--text", "hi", "--format", "xml"], 1, "--format"),
        (["predict", "--package", str(package), "--text", "hi", "--threads", "0"], 1, "--threads"),
        (
            ["predict", "--package", str(package), "--text", "hi", "--personal", str(tmp_path)],
            2,
            "personal.json missing",
        ),
        (
            ["evaluate", "--package", str(package), "--data", str(write_csv(tmp_path / "bad.csv", [("x", "nope")]))],
            2,
            "nope",
        ),
        (["evaluate", "--package", str(package)], 1, "--data is required"),
    ]
    for argv, code, message in cases:
        ran = subprocess.run([str(_driver()), *argv], capture_output=True, text=True)
        assert ran.returncode == code and message in ran.stderr, (argv, ran.returncode, ran.stderr)
    shown = subprocess.run([str(_driver()), "predict", "--help"], capture_output=True, text=True)
    assert shown.returncode == 0 and "predict  label texts" in shown.stdout
