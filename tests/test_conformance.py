"""Conformance: a reader written from docs/package-format.md alone (tests/conformance/reader.py: onnxruntime,
tokenizers, safetensors, numpy; none of edgetune's modules) reproduces ``edgetune predict --logits`` for every
family and every personal-state kind the project writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from device_sim.device import Device
from edgetune_cli import app
from tests.devices import STATE_KINDS as KINDS
from tests.devices import export_probe_package, make_state
from tests.test_onnx_top import TEXTS

TOLERANCE = 1e-4


def _predicted_logits(package: Path, personal: Path | None, runtime: str = "torch") -> np.ndarray:
    args = ["predict", "--package", str(package), "--format", "jsonl", "--logits", "--runtime", runtime]
    args += ["--personal", str(personal)] if personal is not None else []
    args += [arg for text in TEXTS for arg in ("--text", text)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return np.array([json.loads(line)["logits"] for line in result.output.strip().splitlines()])


def _reader_logits(package: Path, personal: Path | None) -> np.ndarray:
    """The reader's logits through ``top.onnx``, checked against its own numpy top (the document's block
    conventions, run in one padded batch) on the way."""
    from tests.conformance.reader import Reader

    reader = Reader(package)
    got = reader.logits(TEXTS, personal)
    assert np.abs(reader.logits(TEXTS, personal, top="numpy") - got).max() < TOLERANCE
    return got


def test_the_reader_imports_nothing_of_the_project():
    code = "import sys; import tests.conformance.reader, tests.conformance.blocks; print(sorted(sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert run.returncode == 0, run.stderr
    loaded = [m for m in eval(run.stdout) if m.split(".")[0] in ("edgetune", "device_sim", "exporters", "torch")]
    assert loaded == []


@pytest.fixture(scope="module")
def bert_states(device_packages, tmp_path_factory):
    root = tmp_path_factory.mktemp("conformance-bert")
    with Device(device_packages["main"], threads=1) as device:
        return {kind: make_state(device, kind, root / kind) for kind in KINDS}


@pytest.mark.parametrize("kind", [None, *KINDS])
def test_reader_reproduces_predict_on_bert(kind, bert_states, device_packages):
    personal = None if kind is None else bert_states[kind]
    want = _predicted_logits(device_packages["main"], personal)
    got = _reader_logits(device_packages["main"], personal)
    assert np.abs(got - want).max() < TOLERANCE


@pytest.mark.parametrize("family", ["roberta", "distilbert", "electra", "mpnet", "qwen2", "mistral"])
def test_reader_reproduces_predict_on_the_other_families(family, tiny_model_dir, tmp_path):
    """RoBERTa (BERT's block), DistilBERT (its own block names), MPNet (the relative position bias table
    ``rotary.weight`` fed to the top like any other tensor), Qwen2 (biased q/k/v projections) and Mistral, alone
    and with a LoRA and a full state."""
    package = export_probe_package(tiny_model_dir(family), tmp_path / "pkg", top_onnx=True)
    with Device(package, threads=1) as device:
        states = {kind: make_state(device, kind, tmp_path / kind) for kind in ("full", "lora")}
    for personal in (None, *states.values()):
        want = _predicted_logits(package, personal)
        got = _reader_logits(package, personal)
        assert np.abs(got - want).max() < TOLERANCE, personal


def test_reader_reproduces_predict_on_qwen3(tmp_path):
    """Qwen3: the Llama block with per-head q/k RMSNorm before the rotary embedding (a tiny model built here;
    the shared fixtures have no Qwen3)."""
    import torch
    import transformers as tf

    from tests.conftest import VOCAB, build_tokenizer

    torch.manual_seed(0)
    sizes = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "num_key_value_heads": 1}
    config = tf.Qwen3Config(vocab_size=len(VOCAB) + 8, head_dim=16, intermediate_size=64, max_position_embeddings=64,
                            **sizes)  # fmt: skip
    tf.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval().save_pretrained(tmp_path / "m")
    build_tokenizer("llama").save_pretrained(tmp_path / "m")
    package = export_probe_package(tmp_path / "m", tmp_path / "pkg", top_onnx=True)
    with Device(package, threads=1) as device:
        state = make_state(device, "lora", tmp_path / "lora")
    for personal in (None, state):
        assert np.abs(_reader_logits(package, personal) - _predicted_logits(package, personal)).max() < TOLERANCE


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_reader_reproduces_predict_on_decoders(family, tiny_model_dir, tmp_path):
    """Decoders with every personal-state kind: causal blocks, last-token pooling, the final norm, GPT-2's
    (in, out) projections (LoRA and DSEE updates transposed), Llama's rotary embeddings."""
    package = export_probe_package(tiny_model_dir(family), tmp_path / "pkg", top_onnx=True)
    with Device(package, threads=1) as device:
        states = {kind: make_state(device, kind, tmp_path / kind) for kind in KINDS}
    for kind, personal in (("package", None), *states.items()):
        want = _predicted_logits(package, personal)
        got = _reader_logits(package, personal)
        assert np.abs(got - want).max() < TOLERANCE, kind


def test_a_residual_fala_state_is_one_affine_head_everywhere(device_packages, tmp_path):
    """FaLA's residual form (``base(x) + head(M x + b) - reference(M x + b)``): the reader's folded head, the
    torch top and the ONNX top (torch-free runtime) agree."""
    import torch

    from edgetune_format.personal import write_personal_state

    g = torch.Generator().manual_seed(1)
    with Device(device_packages["main"], threads=1) as device:
        d, c = device.package.hidden_size, len(device.labels)
        tensors = {
            "matrix.linear.weight": torch.eye(d) + 0.1 * torch.randn(d, d, generator=g),
            "matrix.linear.bias": 0.1 * torch.randn(d, generator=g),
            "head.weight": torch.randn(c, d, generator=g), "head.bias": torch.randn(c, generator=g),
            "base.weight": torch.randn(c, d, generator=g), "base.bias": torch.randn(c, generator=g),
            "reference.weight": torch.randn(c, d, generator=g), "reference.bias": torch.randn(c, generator=g),
        }  # fmt: skip
        write_personal_state(tmp_path / "residual", tensors, device.package, train_cut=device.package.num_layers,
                             tuner={"name": "fala", "params": {"form": "residual"}}, kind="fala")  # fmt: skip
    personal = tmp_path / "residual"
    want = _predicted_logits(device_packages["main"], personal)
    assert np.abs(_reader_logits(device_packages["main"], personal) - want).max() < TOLERANCE
    assert np.abs(_predicted_logits(device_packages["main"], personal, "onnx") - want).max() < TOLERANCE


def test_the_reader_refuses_a_state_of_another_package(bert_states, device_packages):
    from tests.conformance.reader import Reader

    with pytest.raises(ValueError, match="another package"):
        Reader(device_packages["other"]).logits(TEXTS[:1], bert_states["lora"])
