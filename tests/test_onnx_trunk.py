"""ONNX trunk export: parity with the torch trunk for every family, dynamic shapes, loud failure."""

import numpy as np
import onnx
import pytest
import torch

from device_sim.runtime import TRUNK_OUTPUTS, ort_session
from edgetune.api import load_model
from edgetune.modeling import SequenceClassifier
from exporters.errors import ParityError
from exporters.onnx_trunk import DEFAULT_VERIFY_TEXTS, export_trunk, verify_trunk
from tests.conftest import FAMILIES, LABELS

TEXTS = ["apple", "the goal of the match was a late score by the team", "vote party", "juice"] + list(
    DEFAULT_VERIFY_TEXTS
)


def _classifier(tiny_model_dir, family: str, layers: int = 3):
    backbone, encoder = load_model(tiny_model_dir(family, layers=layers), max_length=32)
    return SequenceClassifier(backbone, len(LABELS), list(LABELS)).eval(), encoder


@pytest.mark.parametrize("family", FAMILIES)
def test_trunk_parity_every_family(family, tiny_model_dir, tmp_path):
    clf, encoder = _classifier(tiny_model_dir, family)
    export = export_trunk(clf, 2, tmp_path / "trunk.onnx", pad_id=encoder.pad_id)
    parity = verify_trunk(clf, 2, export.path, encoder, TEXTS)
    assert parity.max_abs_diff <= 1e-4
    assert [1, 1] in [s[:1] + [1] for s in parity.batch_shapes]  # a batch of one was checked too

    # dynamic axes: batch and sequence sizes never seen at export time, with padding
    session = ort_session(export.path, threads=1)
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert [o.name for o in session.get_outputs()] == list(TRUNK_OUTPUTS)
    ids, mask = encoder(TEXTS[:5])
    hidden, mask_out = session.run(None, {"input_ids": ids, "attention_mask": mask})
    with torch.inference_mode():
        want = clf.trunk_forward(torch.from_numpy(ids), torch.from_numpy(mask), 2).numpy()
    assert hidden.shape == (5, ids.shape[1], clf.backbone.hidden_size)
    assert np.array_equal(mask_out, mask)
    real = mask.astype(bool)
    assert np.abs(hidden[real] - want[real]).max() <= 1e-4


@pytest.mark.parametrize(("family", "cut"), [("bert", 0), ("llama", 3)])
def test_trunk_at_the_edges(family, cut, tiny_model_dir, tmp_path):
    """cut 0 = embeddings only; cut L = every block (the top is then norm + pooling + head)."""
    clf, encoder = _classifier(tiny_model_dir, family)
    export = export_trunk(clf, cut, tmp_path / "trunk.onnx", pad_id=encoder.pad_id)
    assert verify_trunk(clf, cut, export.path, encoder, TEXTS).max_abs_diff <= 1e-4


def test_parity_failure_is_loud_and_names_the_diff(tiny_model_dir, tmp_path):
    clf, encoder = _classifier(tiny_model_dir, "gpt2")
    export = export_trunk(clf, 2, tmp_path / "trunk.onnx", pad_id=encoder.pad_id)
    with torch.no_grad():  # the torch model drifts after export: the ONNX graph no longer matches it
        clf.backbone.blocks[1].mlp.c_proj.bias.add_(0.01)
    with pytest.raises(ParityError, match=r"max abs diff [0-9.e-]+ \(tolerance 0.0001\)") as err:
        verify_trunk(clf, 2, export.path, encoder, TEXTS)
    assert err.value.max_abs_diff > 1e-3
    assert "trunk.onnx" in str(err.value)


def test_external_weights_file(tiny_model_dir, tmp_path):
    """Graphs past protobuf's 2 GiB keep weights in a side file; forced here on a tiny model."""
    clf, encoder = _classifier(tiny_model_dir, "bert")
    export = export_trunk(clf, 2, tmp_path / "trunk.onnx", external_data=True, pad_id=encoder.pad_id)
    assert len(export.files) == 2 and export.files[-1] == export.path
    graph = onnx.load(str(export.path), load_external_data=False)
    external = [t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and export.files[0].stat().st_size > 0  # weights live in the side file
    assert verify_trunk(clf, 2, export.path, encoder, TEXTS).max_abs_diff <= 1e-4
