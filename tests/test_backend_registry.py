"""The training backends' registry: every backend by name, a clear error for an unknown one, and a backend
defined in one place (here, a test) that runs through the one personalization job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device_sim.backends import BUILT_IN, REGISTRY, backend_names, get_backend, register
from device_sim.backends.base import Backend, Candidate
from device_sim.device import Device
from device_sim.selection import Trained
from device_sim.settings import PersonalizeConfig
from edgetune_format.personal import read_personal_state
from tests.devices import user_data


def test_the_registry_lists_the_built_in_backends():
    assert backend_names()[:3] == ("torch", "executorch", "executorch-cpp")
    assert set(BUILT_IN) == {"torch", "executorch", "executorch-cpp"}
    for name in BUILT_IN:
        cls = get_backend(name)
        assert issubclass(cls, Backend) and cls.name == name and REGISTRY[name] is cls


def test_an_unknown_backend_is_a_clear_error(device_packages, tmp_path):
    with pytest.raises(ValueError, match=r"unknown training backend 'tflite'; choose one of torch, executorch"):
        get_backend("tflite")
    with Device(device_packages["main"], threads=1) as device:
        with pytest.raises(ValueError, match="unknown training backend 'tflite'"):
            device.personalize(user_data(40, seed=3), tmp_path / "p", backend="tflite")
    assert not (tmp_path / "p").exists()


class MajorityHead(Backend):
    """A backend in one class: it trains the head alone, by moving its bias towards the most frequent label."""

    name = "majority-head"

    def unsupported(self, candidate: Candidate, configured: bool) -> str | None:
        return None if candidate.head_only else "majority-head trains the head alone"

    def features(self, job: Any, work: Path) -> dict[str, float]:
        self.labels = {name: job.y[job.split(name)] for name in ("train", "val", "guard")}
        return {}

    def train(self, candidate: Candidate, job: Any, work: Path) -> Trained:
        majority = int(np.bincount(self.labels["train"], minlength=len(self.package.labels)).argmax())
        shift = np.zeros(len(self.package.labels), np.float32)
        shift[majority] = 1.0
        val = self.labels["val"]
        accuracy = float((val == majority).mean()) if len(val) else None
        history = [{"epoch": 1, "loss": 0.0, "val_accuracy": accuracy}]
        return Trained(
            candidate.name, self.prior_tensors(shift), candidate.cut, {"name": "full", "params": {}}, history, 1,
            val_accuracy=accuracy, estimate=candidate.estimate,
        )  # fmt: skip

    def logits(self, split: str, trained: Trained | None = None) -> np.ndarray:
        out = np.zeros((len(self.labels[split]), len(self.package.labels)), np.float32)
        if trained is not None:
            out += trained.tensors["head.bias"] - self.package.top_tensors()["head.bias"]
        return out

    def prior_tensors(self, shift: np.ndarray) -> dict[str, Any]:
        weights = self.package.top_tensors()
        return {"head.weight": weights["head.weight"], "head.bias": weights["head.bias"] + shift.astype(np.float32)}

    def record(self, chosen: Trained) -> dict[str, Any]:
        return {"backend": self.name}


@pytest.fixture
def majority_head():
    register(MajorityHead)
    yield MajorityHead
    del REGISTRY[MajorityHead.name]


def test_a_backend_in_one_class_runs_through_the_shared_job(majority_head, device_packages, tmp_path):
    assert "majority-head" in backend_names()
    config = PersonalizeConfig(epochs=1, progress=False, guard_fraction=0.0)
    with Device(device_packages["main"], threads=1) as device:
        result = device.personalize(user_data(60, seed=3), tmp_path / "p", config, backend="majority-head")
        state = device.load_personal(tmp_path / "p")
    selection = result.manifest["selection"]
    assert [c["name"] for c in selection["candidates"]] == ["prior", "head", "head-fast"]
    assert {s["name"]: s["reason"] for s in selection["skipped"]} == {
        "lora": "majority-head trains the head alone",
        "block": "majority-head trains the head alone",
    }
    assert result.manifest["training"]["backend"] == "majority-head"
    assert result.num_train + result.num_val == 60 and result.num_guard == 0
    if result.kept == "personal":
        assert sorted(state.tensors) == ["head.bias", "head.weight"]
    assert read_personal_state(tmp_path / "p").kind in ("top_delta", "kept_global")
    assert not (tmp_path / ".p.partial").exists()


def test_the_shared_job_is_torch_free():
    """The job and the backends' interface load no torch: only the torch backend (and ExecuTorch's Python
    bindings) bring it in, when asked for by name."""
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json, sys; import device_sim.personalize, device_sim.backends.program; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m == 'edgetune.train')))"
    )
    env_path = str(Path(__file__).resolve().parents[1])
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": env_path},
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []
