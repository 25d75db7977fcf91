"""The real all-MiniLM-L6-v2 on BBC news: the package predicts what the source model predicts.

A fast version of ``benchmarks/export_ort.py`` (which checks the whole 445-document test split):
a head probe fitted on 100 training documents, 24 test documents, 64 tokens.
"""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from device_sim.package import load_package
from edgetune.api import load_model, plan
from edgetune.data import sample, stratified_split
from edgetune.datasets import bbc_news, minilm_path
from edgetune.modeling import SequenceClassifier
from exporters.export import ExportOptions, export_package


@pytest.fixture(scope="module")
def minilm_package(tmp_path_factory):
    train, test = stratified_split(bbc_news(), 0.2, seed=0)
    backbone, encoder = load_model(minilm_path(), max_length=64)
    the_plan = plan((backbone, encoder), sample(train, 100), planner="topk", planner_params={"k": 1}, progress=False)
    out = tmp_path_factory.mktemp("minilm") / "pkg"
    options = ExportOptions(int8=True, threads=2, val_fraction=0.0, top_onnx=False)
    result = export_package(
        minilm_path(), the_plan, out, data=sample(train, 100), val_data=sample(test, 40, seed=1), options=options
    )
    return result, backbone, sample(test, 24, seed=2)


def test_package_matches_the_source_model(minilm_package):
    result, backbone, test = minilm_package
    m = result.manifest
    assert m["cut"] == 5 and m["backbone"]["hidden_size"] == 384 and m["trunk"]["parity"]["max_abs_diff"] <= 1e-4
    source = SequenceClassifier(backbone, 5, m["labels"]).eval()
    head = load_file(str(result.path / "top.safetensors"))
    source.head.load_state_dict({"weight": head["head.weight"], "bias": head["head.bias"]})
    with load_package(result.path, threads=2) as pkg:
        got = pkg.predict_logits(test.texts, batch_size=8)
        ids, mask = pkg.encode(test.texts)
    with torch.inference_mode():
        want = source(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    assert np.abs(got - want).max() <= 1e-3
    assert np.array_equal(got.argmax(1), want.argmax(1))
    labels = np.array([m["labels"].index(y) for y in test.labels])
    assert (got.argmax(1) == labels).mean() >= 0.8  # a probe on 100 documents is already a real classifier


def test_int8_minilm_is_small_and_accurate(minilm_package):
    result, _, _ = minilm_package
    q = result.manifest["trunk_int8"]
    assert q["size_ratio"] <= 0.3  # the embedding table is quantized too (Gather), not only the MatMuls
    assert q["accuracy"]["num_examples"] == 40 and q["accuracy"]["delta_points"] >= -5.0
