"""`edgetune export-personal`: a package + personal state as one Hugging Face ONNX model directory that optimum's
ORTModelForSequenceClassification and a transformers pipeline load, answering as `edgetune predict` does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from device_sim.device import Device
from edgetune_cli import app
from tests.conftest import write_csv
from tests.devices import STATE_KINDS, make_state, user_data

pytest.importorskip("optimum.onnxruntime")  # the dev extra installs optimum-onnx: CI runs these tests

# the package's max_length is 32 tokens: the last text is cut, in predict and (truncation=True) in the pipeline
TEXTS = [*user_data(10, seed=11).texts, " ".join(["apple banana goal match"] * 20)]


@pytest.fixture(scope="module")
def states(device_packages, tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-states")
    with Device(device_packages["main"], threads=1) as device:
        return {kind: make_state(device, kind, root / kind) for kind in ("lora", "kept_global")}


def predict_logits(package: Path, personal: Path, tmp: Path) -> np.ndarray:
    """`edgetune predict --format jsonl --logits` on TEXTS, as a user runs it."""
    csv = write_csv(tmp / "texts.csv", [(t, "alpha") for t in TEXTS])
    args = ["predict", "--package", str(package), "--personal", str(personal), "--data", str(csv)]
    result = CliRunner().invoke(app, [*args, "--format", "jsonl", "--logits"])
    assert result.exit_code == 0, result.output
    return np.array([json.loads(line)["logits"] for line in result.output.strip().splitlines()])


def export(package: Path, personal: Path, out: Path) -> CliRunner:
    args = ["export-personal", "--package", str(package), "--personal", str(personal), "--out", str(out)]
    return CliRunner().invoke(app, [*args, "--threads", "1"])


def test_optimum_and_a_pipeline_load_the_personal_model_and_match_predict(states, device_packages, tmp_path):
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer, pipeline

    out = tmp_path / "personal-model"
    result = export(device_packages["main"], states["lora"], out)
    assert result.exit_code == 0, result.output
    assert "export-personal: merged a lora state (block" in " ".join(result.output.split())  # what went in, in words
    assert {"model.onnx", "config.json", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    want = predict_logits(device_packages["main"], states["lora"], tmp_path)

    model = ORTModelForSequenceClassification.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    with Device(device_packages["main"]) as device:
        assert model.config.id2label == dict(enumerate(device.labels))
        ids, _ = device.package.encode(TEXTS)
    batch = tokenizer(TEXTS, padding=True, truncation=True, return_tensors="np")
    assert np.array_equal(batch["input_ids"], ids)  # same ids as the package's encoder, truncation included
    got = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert np.abs(np.asarray(got) - want).max() < 1e-4

    pipe = pipeline("text-classification", model=model, tokenizer=tokenizer)
    answers = pipe(TEXTS, truncation=True, top_k=None)
    probs = np.exp(want - want.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    for row, answer in zip(probs, answers):
        scores = {a["label"]: a["score"] for a in answer}
        assert np.abs(np.array([scores[label] for label in device.labels]) - row).max() < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("kind", STATE_KINDS)
def test_every_state_kind_merges(kind, device_packages, tmp_path):
    """Each kind of state the device writes (full, head only, the LoRA family, FaLA in both forms, kept global)
    merges into the graph, and the graph answers as predict does."""
    from exporters.personal_model import export_personal_model

    with Device(device_packages["main"], threads=1) as device:
        state = make_state(device, kind, tmp_path / kind)
        want = device.predict_logits(TEXTS, state)
        base = device.predict_logits(TEXTS)
    result = export_personal_model(device_packages["main"], state, tmp_path / "model", threads=1)
    assert result.kind == {"fala": "fala", "fala-residual": "fala", "kept_global": "kept_global"}.get(kind, "top_delta")
    with Device(device_packages["main"]) as device:
        ids, mask = device.package.encode(TEXTS)
    from device_sim.runtime import ort_session

    got = ort_session(tmp_path / "model" / "model.onnx").run(["logits"], {"input_ids": ids, "attention_mask": mask})
    assert np.abs(got[0] - want).max() < 1e-4
    if kind != "kept_global":
        assert np.abs(got[0] - base).max() > 1e-3  # the state changed the model, and the graph holds the change


def test_optimum_exporter_and_ours_agree_on_the_global_model(states, device_packages, tiny_model_dir, tmp_path):
    """optimum's own exporter (feature-extraction of the backbone) + the package's pooling and head gives the
    logits of our merged graph with a kept-global state: the two exporters agree on the same weights."""
    import torch
    from optimum.exporters.onnx import main_export

    from device_sim.runtime import ort_session

    main_export(str(tiny_model_dir("bert")), output=tmp_path / "optimum", task="feature-extraction", opset=18)
    result = export(device_packages["main"], states["kept_global"], tmp_path / "ours")
    assert result.exit_code == 0, result.output
    assert "a kept-global state: the package's own top, nothing to merge" in " ".join(result.output.split())
    with Device(device_packages["main"]) as device:
        ids, mask = device.package.encode(TEXTS)
        top = device.top().above(device.package.num_layers)  # the final norm, pooling and head
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    optimum = ort_session(tmp_path / "optimum" / "model.onnx")
    hidden = optimum.run(["last_hidden_state"], {i.name: feeds[i.name] for i in optimum.get_inputs()})[0]
    with torch.inference_mode():
        theirs = top(torch.from_numpy(hidden), torch.from_numpy(mask)).numpy()
    ours = ort_session(tmp_path / "ours" / "model.onnx").run(["logits"], {"input_ids": ids, "attention_mask": mask})
    assert np.abs(ours[0] - theirs).max() < 1e-4


def test_the_summary_line_says_what_the_state_brings():
    """The command names the tuner and what it trained, not the state file's internal kind (``top_delta``)."""
    from exporters.personal_model import describe_state

    lora, full = {"name": "lora", "params": {"r": 8}}, {"name": "full", "params": {}}
    assert describe_state("top_delta", lora, 5, 6) == "merged a lora state (blocks 6..6 + head)"
    assert describe_state("top_delta", full, 3, 6) == "merged a full state (blocks 4..6 + head)"
    assert describe_state("top_delta", full, 6, 6) == "merged a full state (the head only)"
    fala = {"name": "fala", "params": {"form": "residual"}}
    assert describe_state("fala", fala, 6, 6) == "merged a FaLA state (residual form: a personal feature matrix + head)"
    none = {"name": "none", "params": {}}
    assert describe_state("kept_global", none, 5, 6) == "a kept-global state: the package's own top, nothing to merge"


def test_a_state_of_another_package_is_refused(states, device_packages, tmp_path):
    out = tmp_path / "model"
    result = export(device_packages["other"], states["lora"], out)
    assert result.exit_code == 2
    assert "error:" in result.output and "package" in result.output
    assert not out.exists()


def test_a_tampered_state_is_refused(states, device_packages, tmp_path):
    state = tmp_path / "state"
    shutil.copytree(states["lora"], state)
    weights = state / "delta.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = export(device_packages["main"], state, tmp_path / "model")
    assert result.exit_code == 2 and "delta.safetensors" in result.output
    assert not (tmp_path / "model").exists()


def test_bad_paths_and_foreign_outputs_are_refused(states, device_packages, tmp_path):
    result = export(tmp_path / "nowhere", states["lora"], tmp_path / "model")
    assert result.exit_code == 2 and "--package" in result.output
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    result = export(device_packages["main"], states["lora"], mine)
    assert result.exit_code == 2 and "not empty" in result.output
    assert (mine / "notes.txt").read_text() == "mine"


def test_a_graph_that_does_not_match_is_refused_and_the_previous_model_kept(
    states, device_packages, tmp_path, monkeypatch
):
    import exporters.personal_model as pm

    out = tmp_path / "model"
    assert export(device_packages["main"], states["kept_global"], out).exit_code == 0
    before = (out / "model.onnx").read_bytes()
    real = pm.compose_model

    def broken(trunk, top, tensors):  # a graph whose head is off by 0.01: verification must refuse it
        return real(trunk, top, {**tensors, "head.bias": tensors["head.bias"] + 0.01})

    monkeypatch.setattr(pm, "compose_model", broken)
    result = export(device_packages["main"], states["lora"], out)
    assert result.exit_code == 2 and "max abs diff" in result.output
    assert (out / "model.onnx").read_bytes() == before  # the previous model, whole
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_help_explains_the_command():
    result = CliRunner().invoke(app, ["export-personal", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for words in ("--package", "--personal", "--out", "ORTModelForSequenceClassification", "pipeline"):
        assert words in result.output


@pytest.mark.slow
def test_a_package_without_the_onnx_top_gets_its_top_exported(states, device_packages, tiny_model_dir, tmp_path):
    """A package exported with --no-top-onnx: the top graph is exported from the torch top on the spot, and the
    model still answers as predict does."""
    from device_sim.runtime import ort_session
    from exporters.personal_model import export_personal_model
    from tests.devices import export_probe_package

    package = export_probe_package(tiny_model_dir("bert"), tmp_path / "pkg")  # the same model: states still fit
    assert "top.onnx" not in {p.name for p in package.iterdir()}
    export_personal_model(package, states["lora"], tmp_path / "model", threads=1)
    with Device(package) as device:
        ids, mask = device.package.encode(TEXTS)
        want = device.predict_logits(TEXTS, states["lora"])
    got = ort_session(tmp_path / "model" / "model.onnx").run(["logits"], {"input_ids": ids, "attention_mask": mask})
    assert np.abs(got[0] - want).max() < 1e-4
