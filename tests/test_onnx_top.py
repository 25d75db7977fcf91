"""Prediction in onnxruntime alone: the package's ONNX top (tensors as inputs) with every kind of personal state
applied in numpy (device_sim.apply) answers as the torch top does; a process without torch predicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device_sim.device import Device
from edgetune_format.personal import PersonalStateError
from tests.conftest import write_csv
from tests.devices import STATE_KINDS as KINDS
from tests.devices import make_state, user_data

TEXTS = user_data(24, seed=11).texts


@pytest.fixture(scope="module")
def states(device_packages, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx-top-states")
    with Device(device_packages["main"], threads=1) as device:
        return {kind: make_state(device, kind, root / kind) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_onnx_top_answers_as_the_torch_top(kind, states, device_packages):
    with Device(device_packages["main"], threads=1) as device:
        want = device.predict_logits(TEXTS, states[kind], backend="torch")
        got = device.predict_logits(TEXTS, states[kind], backend="onnx")
        base = device.predict_logits(TEXTS, None, backend="onnx")
    assert np.abs(got - want).max() < 1e-4
    assert (got.argmax(axis=1) == want.argmax(axis=1)).all()
    if kind != "kept_global":  # the state changed something, and the ONNX top applied it
        assert np.abs(got - base).max() > 1e-3


def test_states_the_onnx_top_cannot_apply_are_refused(states, device_packages, tmp_path):
    from edgetune_format.personal import read_personal_state

    with Device(device_packages["main"], threads=1) as device:
        state = read_personal_state(states["lora"], "np")
        state.manifest["tuner"] = {"name": "dsee", "params": {**state.tuner["params"], "prune_ratio": 0.5}}
        with pytest.raises(PersonalStateError, match="needs the torch top"):
            device.predictor(state, backend="onnx")
        state = read_personal_state(states["full"], "np")
        name = next(iter(state.tensors))
        state.tensors[name] = np.zeros((1, 1), np.float32)
        with pytest.raises(PersonalStateError, match="has shape"):
            device.predictor(state, backend="onnx")


PREDICT_WITHOUT_TORCH = """
import json, sys
sys.modules["torch"] = None  # as on a device where torch is not installed: any import of it fails
from typer.testing import CliRunner
from edgetune_cli import app
result = CliRunner().invoke(app, ["predict", *sys.argv[1:]])
assert result.exit_code == 0, result.output
print(json.dumps({"output": result.output, "torch": sys.modules.get("torch") is not None,
                  "transformers": any(m.startswith("transformers") for m in sys.modules)}))
"""


def test_predict_runs_without_torch_and_matches_the_torch_path(states, device_packages, tmp_path):
    from typer.testing import CliRunner

    from edgetune_cli import app

    csv = write_csv(tmp_path / "texts.csv", [(t, "alpha") for t in TEXTS])
    args = ["--package", str(device_packages["main"]), "--personal", str(states["lora"]), "--data", str(csv)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    run = subprocess.run([sys.executable, "-c", PREDICT_WITHOUT_TORCH, *args], capture_output=True, text=True,
                         env=env, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert not report["torch"] and not report["transformers"]
    with_torch = CliRunner().invoke(app, ["predict", *args, "--runtime", "torch"])
    assert with_torch.exit_code == 0, with_torch.output
    assert report["output"].split() == with_torch.output.split()


def test_a_package_without_the_onnx_top_says_how_to_get_one(tiny_model_dir, tmp_path):
    from exporters.export import ExportOptions, export_package
    from tests.packages import dataset, make_plan

    model = tiny_model_dir("bert")
    options = ExportOptions(threads=1, top_onnx=False)
    export_package(model, make_plan(model, k=2), tmp_path / "pkg", data=dataset(60, seed=5), options=options)
    with Device(tmp_path / "pkg", threads=1) as device:
        assert "top_onnx" not in device.package.manifest or not device.package.manifest["top_onnx"]
        with pytest.raises(Exception, match="--top-onnx"):
            device.predictor(None, backend="onnx")
