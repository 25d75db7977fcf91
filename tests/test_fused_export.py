"""``--optimize fused``: onnxruntime's transformer fusions in the trunk, verified, recorded, quantized from."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from device_sim.package import load_package
from edgetune.api import load_model
from edgetune.modeling import SequenceClassifier
from edgetune_cli import app
from exporters.errors import ExportError
from exporters.export import ExportOptions, export_package
from exporters.fused import export_trunk_fused, not_fused_message
from exporters.onnx_trunk import DEFAULT_VERIFY_TEXTS, export_trunk, verify_trunk
from tests.conftest import LABELS, write_csv
from tests.packages import MAX_LENGTH, dataset, make_plan

TEXTS = ["apple", "the goal of the match was a late score by the team", "vote party", *DEFAULT_VERIFY_TEXTS]


def _classifier(tiny_model_dir, family: str):
    backbone, encoder = load_model(tiny_model_dir(family), max_length=MAX_LENGTH)
    return SequenceClassifier(backbone, len(LABELS), list(LABELS)).eval(), encoder


def _op_types(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


@pytest.fixture(scope="module")
def fused_package(tiny_model_dir, tmp_path_factory):
    model = tiny_model_dir("bert")
    out = tmp_path_factory.mktemp("fused") / "pkg"
    options = ExportOptions(optimize="fused", int8=True, threads=1)
    return export_package(model, make_plan(model), out, data=dataset(90), options=options)


def test_fused_trunk_verifies_and_equals_the_plain_trunk(tiny_model_dir, tmp_path):
    clf, encoder = _classifier(tiny_model_dir, "bert")
    fused = export_trunk_fused(clf, 2, tmp_path / "fused.onnx", 18, pad_id=encoder.pad_id)
    assert fused.fused and fused.record["level"] == "fused"
    assert fused.record["fused_ops"]["Attention"] == 2 and fused.record["attention_fused_blocks"] == 2
    assert {"Attention", "SkipLayerNormalization", "BiasGelu"} <= _op_types(fused.export.path)
    assert verify_trunk(clf, 2, fused.export.path, encoder, TEXTS).max_abs_diff <= 1e-4

    plain = export_trunk(clf, 2, tmp_path / "plain.onnx", pad_id=encoder.pad_id)
    assert "Attention" not in _op_types(plain.path)
    from device_sim.runtime import ort_session, run_trunk

    ids, mask = encoder(TEXTS)  # one padded batch of mixed lengths
    a = run_trunk(ort_session(fused.export.path, 1), ids, mask)
    b = run_trunk(ort_session(plain.path, 1), ids, mask)
    real = mask.astype(bool)
    assert np.abs(a[real] - b[real]).max() <= 1e-4


def test_fused_package_records_the_optimization_and_loads(fused_package):
    m = fused_package.manifest
    o = m["trunk_optimization"]
    assert o["level"] == "fused" and o["requested"] == "fused" and o["reason"] is None
    assert o["fused_ops"]["Attention"] == o["blocks"] == m["cut"]
    assert m["trunk"]["exporter"] == "torch.onnx.export(dynamo=False)"
    assert m["trunk"]["parity"]["max_abs_diff"] <= 1e-4
    with load_package(fused_package.path, threads=1) as pkg:
        assert pkg.trunk_optimization == "fused"
        assert "Attention" in _op_types(pkg.file("trunk.onnx"))
        fp32 = pkg.predict_logits(TEXTS, backend="onnx")
        int8 = pkg.predict_logits(TEXTS, backend="onnx", precision="int8")
    assert np.isfinite(fp32).all() and np.isfinite(int8).all() and int8.shape == fp32.shape


def test_int8_is_quantized_from_the_fused_graph(fused_package):
    q = fused_package.manifest["trunk_int8"]
    assert q["from"] == "fused"
    assert {"Attention", "EmbedLayerNormalization"} <= set(q["quantization"]["op_types"])
    ops = _op_types(fused_package.path / "trunk.int8.onnx")
    assert "QAttention" in ops and "MatMulInteger" in ops and "Attention" not in ops
    assert q["size_ratio"] < 0.6  # tiny model: the per-channel scales weigh; MiniLM: 0.25
    assert q["accuracy"] is not None  # measured on the held-out part of the data


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_family_that_does_not_fuse_is_recorded_and_ships_the_plain_trunk(family, tiny_model_dir, tmp_path):
    model = tiny_model_dir(family)
    result = export_package(model, make_plan(model), tmp_path / "pkg", options=ExportOptions(optimize="fused"))
    o = result.manifest["trunk_optimization"]
    assert o["level"] == "none" and o["requested"] == "fused" and o["reason"]
    assert not_fused_message(o) in result.warnings
    assert result.manifest["trunk"]["exporter"] == "torch.onnx.export(dynamo=True)"
    with load_package(result.path, threads=1) as pkg:
        assert pkg.trunk_optimization == "none"
        assert pkg.predict_logits(TEXTS[:3], backend="onnx").shape == (3, len(LABELS))


def test_gpt2_reason_names_the_unfused_attention(tiny_model_dir, tmp_path):
    clf, encoder = _classifier(tiny_model_dir, "gpt2")
    fused = export_trunk_fused(clf, 2, tmp_path / "t.onnx", 18, pad_id=encoder.pad_id)
    assert not fused.fused and not (tmp_path / "t.onnx").exists()
    assert "attention of 0 of the trunk's 2 blocks" in fused.record["reason"]


def test_unknown_level_is_refused():
    with pytest.raises(ExportError, match="optimize must be one of none, fused"):
        ExportOptions(optimize="O3")


def test_cli_export_optimize_fused(tiny_model_dir, tmp_path):
    model = tiny_model_dir("bert")
    make_plan(model).save(tmp_path / "plan.json")
    data = write_csv(tmp_path / "train.csv", [(t, lab) for t, lab in zip(dataset(60).texts, dataset(60).labels)])
    args = ["export", "--model", str(model), "--plan", str(tmp_path / "plan.json"), "--out", str(tmp_path / "pkg")]
    result = CliRunner().invoke(app, [*args, "--data", str(data), "--optimize", "fused", "--threads", "1"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "pkg" / "manifest.json").read_text())
    assert manifest["trunk_optimization"]["level"] == "fused"
    bad = CliRunner().invoke(app, [*args, "--optimize", "max"])
    assert bad.exit_code != 0 and "--optimize" in bad.output
