"""Training backends: torch, executorch (Python bindings) and executorch-cpp (the whole job in libedgetune_device)
train alike, write the same personal state, and the ExecuTorch paths stay light (checked in a fresh process)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device_sim.backends import BackendError
from device_sim.device import Device
from device_sim.personalize import PersonalizeConfig
from tests.conftest import write_csv
from tests.devices import fast, user_data

BACKENDS = ("torch", "executorch", "executorch-cpp")


pytestmark = pytest.mark.usefixtures("native_library")


@pytest.fixture(scope="module")
def executorch_package(wordpiece_executorch_package):
    """The package every backend trains here: a tiny BERT with a WordPiece tokenizer (which the library
    implements), exported with the executorch target."""
    return wordpiece_executorch_package


@pytest.fixture(scope="module")
def trained(executorch_package, native_library, tmp_path_factory):
    """Each backend personalizes the same user on the same package; their step losses and states."""
    root = tmp_path_factory.mktemp("backends")
    runs = {}
    with Device(executorch_package, threads=1) as device:
        for backend in BACKENDS:
            losses = []
            if backend == "torch":
                callbacks = [lambda event, losses=losses: losses.append(event.loss)]
            else:
                callbacks = [lambda step, loss, losses=losses: losses.append(loss)]
            result = device.personalize(user_data(120, seed=3), root / backend, fast(epochs=4), callbacks, backend)
            runs[backend] = (np.array(losses), result)
    return root, runs


def test_the_three_backends_follow_the_same_loss_curve(trained):
    _, runs = trained
    torch_losses = runs["torch"][0]
    assert len(torch_losses) == 4 * 7
    for backend in ("executorch", "executorch-cpp"):
        losses, result = runs[backend]
        assert np.abs(losses - torch_losses).max() < 1e-4, backend
        assert result.best_epoch == runs["torch"][1].best_epoch
        assert [h["val_accuracy"] for h in result.history] == [h["val_accuracy"] for h in runs["torch"][1].history]


def test_every_backend_writes_the_same_personal_state_format(trained, executorch_package):
    root, runs = trained
    manifests = {b: json.loads((root / b / "personal.json").read_text()) for b in BACKENDS}
    for backend in ("executorch", "executorch-cpp"):
        m = manifests[backend]
        assert m["tensors"] == manifests["torch"]["tensors"] and m["package"] == manifests["torch"]["package"]
        written_by = "libedgetune_device" if backend == "executorch-cpp" else backend  # the library writes the state
        assert m["tuner"] == manifests["torch"]["tuner"] and m["training"]["backend"] == written_by
    texts = user_data(30, seed=9).texts
    with Device(executorch_package, threads=1) as device:
        base = device.predict_logits(texts, root / "torch")
        for backend in BACKENDS:  # the torch top and the torch-free ONNX top read every state alike
            torch_top = device.predict_logits(texts, root / backend)
            onnx_top = device.predict_logits(texts, root / backend, backend="onnx")
            assert np.abs(torch_top - onnx_top).max() < 1e-4
            assert np.abs(torch_top - base).max() < 1e-3, backend


def test_executorch_backends_refuse_what_the_program_cannot_train(executorch_package, device_packages, tmp_path):
    with Device(device_packages["main"], threads=1) as device:
        with pytest.raises(BackendError, match="--target executorch"):
            device.personalize(user_data(40, seed=3), tmp_path / "p", fast(), backend="executorch-cpp")
    with Device(executorch_package, threads=1) as device:
        with pytest.raises(BackendError, match="needs --trainer torch"):
            device.personalize(user_data(40, seed=3), tmp_path / "p", fast(tuner="dsee"), backend="executorch")
        with pytest.raises(BackendError, match=r"other LoRA settings: r 4 \(program: 8\); it needs --trainer torch"):
            lora4 = fast(tuner="lora", tuner_params={"r": 4})
            device.personalize(user_data(40, seed=3), tmp_path / "p", lora4, backend="executorch")
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("backend", ["executorch", "executorch-cpp"])
def test_executorch_backends_select_and_guard_like_the_torch_backend(backend, executorch_package, tmp_path):
    """The default job on an ExecuTorch backend: the candidates the program can train, the guard, one format."""
    config = PersonalizeConfig(epochs=3, progress=False)  # select and guard on, as the CLI's default
    data = user_data(90, seed=5)
    with Device(executorch_package, threads=1) as device:
        result = device.personalize(data, tmp_path / "p", config, backend=backend)
        manifest = result.manifest
        names = [c["name"] for c in manifest["selection"]["candidates"]]
        assert names == ["prior", "head", "head-fast", "lora", "block"]  # top_train_lora.pte trains the LoRA one
        assert manifest["selection"]["skipped"] == []
        assert manifest["guard"]["enabled"] and manifest["guard"]["candidate"] == manifest["selection"]["chosen"]
        assert result.num_guard == 18 and result.num_train + result.num_val + result.num_guard == 90
        assert manifest["training"]["backend"] == {"executorch-cpp": "libedgetune_device"}.get(backend, backend)
        head = next(c for c in result.candidates if c.name == "head")
        block = next(c for c in result.candidates if c.name == "block")
        assert head.train_cut == 3 and block.train_cut == 1 and len(head.history) == len(block.history) == 3
        if backend == "executorch":  # Python holds every candidate's tensors; the library keeps the chosen one's
            assert sorted(head.tensors) == ["head.bias", "head.weight"]
            assert any(k.startswith("blocks.") for k in block.tensors)
        texts = user_data(20, seed=8).texts
        torch_top = device.predict_logits(texts, tmp_path / "p")
        onnx_top = device.predict_logits(texts, tmp_path / "p", backend="onnx")
        assert np.abs(torch_top - onnx_top).max() < 1e-4
        # a head-only state (the blocks stayed frozen at learning rate 0) predicts on both tops alike
        only_head = device.personalize(data, tmp_path / "h", fast(cut=3), backend=backend)
        assert only_head.train_cut == 3 and sorted(only_head.candidate.tensors) == ["head.bias", "head.weight"]
        assert (
            np.abs(
                device.predict_logits(texts, tmp_path / "h")
                - device.predict_logits(texts, tmp_path / "h", backend="onnx")
            ).max()
            < 1e-4
        )


LIGHT_JOB = """
import json, sys
from device_sim.device import Device
backend, package, out, data = sys.argv[1:5]
from device_sim.settings import PersonalizeConfig as Settings
with Device(package, threads=1) as device:
    device.personalize(data, out, Settings(epochs=2, progress=False), backend=backend)
    device.predictor(out, backend="torch" if backend == "torch" else "onnx").predict(["apple juice"])
print(json.dumps(sorted(sys.modules)))
"""

FORBIDDEN = {  # what each backend's personalize + predict must not load
    "torch": ("transformers", "accelerate", "scipy", "sklearn", "edgetune.planner", "edgetune.train", "peft"),
    "executorch": ("transformers", "accelerate", "scipy", "sklearn", "edgetune.planner", "edgetune.train", "peft"),
    "executorch-cpp": (
        "torch", "transformers", "accelerate", "scipy", "sklearn", "edgetune.planner", "edgetune.train", "peft",
        "executorch", "edgetune.modeling",
    ),
}  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_device_path_imports(backend, executorch_package, tmp_path):
    """A fresh process: a personalize and a predict on ``backend`` load none of the heavy server modules."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    data = user_data(60, seed=3)
    csv = write_csv(tmp_path / "user.csv", list(zip(data.texts, data.labels)))
    run = subprocess.run(
        [sys.executable, "-c", LIGHT_JOB, backend, str(executorch_package), str(tmp_path / "out"), str(csv)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    modules = json.loads(run.stdout.strip().splitlines()[-1])
    loaded = {p for p in FORBIDDEN[backend] for m in modules if m == p or m.startswith(p + ".")}
    assert not loaded, f"{backend}: loaded {sorted(loaded)}"
    assert (tmp_path / "out" / "personal.json").is_file()


def test_cli_personalize_and_predict_on_executorch_cpp(executorch_package, tmp_path):
    from typer.testing import CliRunner

    from edgetune_cli import app

    runner = CliRunner()
    data = user_data(60, seed=3)
    csv = write_csv(tmp_path / "user.csv", list(zip(data.texts, data.labels)))
    out = tmp_path / "personal"
    args = ["personalize", "--package", str(executorch_package), "--data", str(csv), "--out", str(out)]
    result = runner.invoke(app, [*args, "--trainer", "executorch-cpp", "--epochs", "2", "--threads", "1", "-q"])
    assert result.exit_code == 0, result.output
    assert "trainer libedgetune_device" in result.output
    predict = ["predict", "--package", str(executorch_package), "--personal", str(out), "--runtime", "onnx"]
    result = runner.invoke(app, [*predict, "--text", "apple juice today"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() in ("alpha", "beta", "gamma")
    result = runner.invoke(app, [*args, "--trainer", "tflite"])
    assert result.exit_code == 2 and "--trainer" in result.output
    # the old spelling of both still works, with a warning on stderr that names the new one
    result = runner.invoke(app, [*predict[:-2], "--backend", "onnx", "--text", "apple juice today"])
    assert result.exit_code == 0 and "--backend is deprecated here: use --runtime onnx" in result.output
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "p2"), "--backend", "executorch", "--epochs", "1"])
    assert result.exit_code == 0 and "use --trainer executorch" in result.output, result.output
    result = runner.invoke(app, [*args, "--backend", "executorch", "--trainer", "executorch-cpp"])
    assert result.exit_code == 2 and "old name of --trainer" in result.output
    result = runner.invoke(app, ["inspect", str(executorch_package)])
    assert result.exit_code == 0 and "top_train.pte" in result.output


def test_cli_export_refuses_an_unknown_target(tmp_path):
    from typer.testing import CliRunner

    from edgetune_cli import app

    args = ["export", "--model", str(tmp_path), "--plan", str(tmp_path / "plan.json"), "--out", str(tmp_path / "p")]
    result = CliRunner().invoke(app, [*args, "--targets", "onnx,tflite"])
    assert result.exit_code == 2 and "unknown target 'tflite'" in result.output
