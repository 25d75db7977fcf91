"""MPNet end to end on a tiny random MPNetConfig: plan, export (verified ONNX trunk), personalize, swap.

MPNet computes its relative-position bias in the encoder and hands it to every block; the trunk/top split must
carry it (the top keeps its own copy of the bias table), or the top silently runs without position information.
"""

import json

import pytest
import torch

from device_sim.device import Device
from device_sim.swap import SwapConfig, swap
from edgetune.api import plan
from edgetune.backbones import Backbone
from edgetune.modeling import SequenceClassifier, TopModel
from exporters.export import ExportOptions, export_package
from tests.conftest import build_model
from tests.devices import export_probe_package, fast, user_data
from tests.packages import dataset


def test_position_bias_reaches_the_top_and_matters(tmp_path):
    model = build_model("mpnet", layers=3)
    clf = SequenceClassifier(Backbone(model), num_labels=3).eval()
    assert clf.backbone.rotary is model.encoder.relative_attention_bias
    ids = torch.randint(5, 30, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    top = clf.detached_top(1)
    top.save(tmp_path)
    from safetensors.torch import load_file

    assert "rotary.weight" in load_file(str(tmp_path / "top.safetensors"))  # the top ships its bias table
    rebuilt = TopModel.load(tmp_path).eval()
    with torch.no_grad():
        hidden = clf.trunk_forward(ids, mask, 1)
        want = clf(ids, mask)
        assert torch.allclose(rebuilt(hidden, mask), want, atol=1e-5)
        rebuilt.rotary.weight.normal_(0.0, 5.0)  # another bias table changes the answer: it is really used
        assert not torch.allclose(rebuilt(hidden, mask), want, atol=1e-3)


@pytest.fixture(scope="module")
def mpnet_package(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("mpnet")
    model = tiny_model_dir("mpnet", hidden=48)
    salf = plan(str(model), dataset(90), planner="salf", max_length=32, progress=False)
    result = export_package(model, salf, root / "pkg", data=dataset(90, seed=5), options=ExportOptions(threads=1))
    return {"model": model, "plan": salf, "pkg": root / "pkg", "result": result}


def test_plan_and_export_with_a_verified_trunk(mpnet_package):
    salf = mpnet_package["plan"]
    assert salf.model_type == "mpnet" and salf.num_layers == 3 and 0 <= salf.cut <= 3
    manifest = json.loads((mpnet_package["pkg"] / "manifest.json").read_text())
    assert manifest["backbone"]["model_type"] == "mpnet" and manifest["backbone"]["hidden_size"] == 48
    text = json.dumps(manifest)
    assert "max_abs_diff" in text  # the export recorded its parity check (it raises beyond the tolerance)


def test_personalize_and_predict_on_mpnet(tiny_model_dir, tmp_path):
    pkg = export_probe_package(tiny_model_dir("mpnet", hidden=48), tmp_path / "pkg")  # cut 1 of 3: blocks train
    data, test = user_data(120, seed=3), user_data(60, seed=4)
    with Device(pkg, threads=1) as device:
        result = device.personalize(data, tmp_path / "personal", fast())
        assert result.train_cut == 1
        personal = device.evaluate(test, tmp_path / "personal")["accuracy"]
        global_ = device.evaluate(test)["accuracy"]
    assert personal > global_ + 0.2  # the user's two swapped labels were learnt through MPNet's top blocks


def test_swap_from_bert_to_mpnet(tiny_model_dir, tmp_path):
    """The real swap's shape in miniature: another family and another width (32 -> 48)."""
    old = export_probe_package(tiny_model_dir("bert"), tmp_path / "old")
    new = export_probe_package(tiny_model_dir("mpnet", hidden=48), tmp_path / "new")
    data, test = user_data(120, seed=3), user_data(60, seed=4)
    with Device(old, threads=1) as device:
        device.personalize(data, tmp_path / "personal", fast())
    fala = swap(old, new, tmp_path / "personal", data, tmp_path / "fala", SwapConfig(fraction=0.2, tune_lr=1e-2))
    assert fala.details["d_new"] == 48 and fala.details["d_old"] == 32 and fala.examples_used == 24
    retrain = swap(old, new, tmp_path / "personal", data, tmp_path / "re", SwapConfig(method="retrain",
                   personalize=fast()))  # fmt: skip
    assert fala.flops_reduction > 100 and retrain.backward_flops > fala.backward_flops  # (tiny models: small ratio)
    with Device(new, threads=1) as device:
        assert device.evaluate(test, tmp_path / "fala")["accuracy"] > device.evaluate(test)["accuracy"] + 0.15
