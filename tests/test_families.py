"""The model-family registry (edgetune.families): every family answers every question the code asks, an unknown
model type is one clear error, and a family registered at run time works end to end without any other module
knowing it (adding a family is one place)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from device_sim.fit import token_positions
from edgetune.backbones import Backbone
from edgetune.costs import ArchSummary, CostConfig, estimate_all
from edgetune.families import (
    FAMILIES,
    UnsupportedModelError,
    all_families,
    family_for,
    register,
    supported_model_types,
    unregister,
)
from edgetune.modeling import SequenceClassifier, TopModel
from edgetune.native import native_support
from edgetune.tuners.dsee.heads import head_slices
from edgetune.tuners.lora import default_target_modules
from tests.conftest import FAMILIES as TINY_MODEL_TYPES
from tests.conftest import build_model, build_tokenizer, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def test_the_tiny_models_cover_every_family():
    assert {FAMILIES[t].name for t in TINY_MODEL_TYPES} == {f.name for f in all_families()}


@pytest.mark.parametrize("family", all_families(), ids=lambda f: f.name)
def test_every_family_declares_every_fact(family):
    assert family.model_types and all(family_for(t) is family for t in family.model_types)
    assert family.description
    assert family.pooling == ("last" if family.is_decoder else "mean")
    assert family.attn_implementation in ("sdpa", "eager")
    assert family.lora_targets and all(isinstance(t, str) for t in family.lora_targets)
    assert len(family.activation_counts) == 3 and all(a >= 0 for a in family.activation_counts)
    assert family.ort_optimizer_type in (None, "bert", "gpt2")
    assert family.activation_key


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_every_family_answers_on_a_real_model(model_type):
    """Layout, running a block, adapters, costs, positions and the plain-torch top, asked of a tiny model."""
    family = family_for(model_type)
    backbone = Backbone(build_model(model_type, layers=2))
    assert backbone.family is family and backbone.num_layers == 2
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        hidden = backbone.run_layers(backbone.embed(ids, mask), mask)
    assert hidden.shape == (2, 4, backbone.hidden_size)
    assert family.embedding_modules(backbone.model)[0] is backbone.embeddings
    assert backbone.embedding_param_count() > 0

    block = backbone.blocks[0]
    names = {name.rsplit(".", 1)[-1]: module for name, module in block.named_modules()}
    for target in default_target_modules(model_type):
        assert target in names, target
        assert (type(names[target]).__name__ == "Conv1D") == family.conv1d_projections
    heads = head_slices(block, model_type)
    assert (heads.num_heads, heads.num_heads * heads.head_dim) == (2, backbone.hidden_size)  # the tiny configs'

    arch = ArchSummary.from_backbone(backbone, num_labels=3)
    assert arch.gated_mlp == family.gated_mlp
    assert len(estimate_all(arch, CostConfig(seq_len=8))) == 3

    config = backbone.config.to_dict()
    assert (token_positions({"model_type": model_type, "hf_config": config}) is not None) == family.learned_positions

    spec = SequenceClassifier(backbone, num_labels=3).top(1).spec
    assert (native_support(spec) is None) == family.native_blocks
    if family.native_blocks:
        native_top = TopModel.from_spec(spec, native=True)
        assert type(native_top.blocks[0]).__module__ == "edgetune.native"
        assert head_slices(native_top.blocks[0], model_type).num_heads == heads.num_heads


def test_an_unknown_model_type_is_one_clear_error():
    with pytest.raises(UnsupportedModelError) as err:
        family_for("albert")
    assert isinstance(err.value, ValueError)
    message = str(err.value)
    assert "unsupported architecture 'albert'" in message
    assert all(t in message for t in supported_model_types())
    with pytest.raises(UnsupportedModelError):
        default_target_modules("albert")


def test_a_model_type_belongs_to_one_family():
    with pytest.raises(ValueError, match="already registered"):
        register(dataclasses.replace(family_for("bert"), name="another-bert"))


def test_the_registry_imports_without_torch():
    """The device's numpy apply and package checks read the registry where torch is not installed."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from edgetune.families import all_families\n"
        "from device_sim.fit import token_positions\n"
        "print(sorted(f.name for f in all_families()))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.strip().splitlines()[-1].replace("'", '"')) == sorted(f.name for f in all_families())


# -- a new family, defined here and registered at run time ---------------------------------------------------
ALIAS = "edgetune-alias-bert"


@pytest.fixture()
def alias_family(tmp_path):
    """BERT under a model type neither transformers nor edgetune knew: transformers learns it through its Auto
    registries, edgetune through one ``register`` call; no other edgetune module is told."""
    from transformers import AutoConfig, AutoModel, BertConfig, BertModel

    class AliasBertConfig(BertConfig):
        model_type = ALIAS

    class AliasBertModel(BertModel):
        config_class = AliasBertConfig

    AutoConfig.register(ALIAS, AliasBertConfig, exist_ok=True)
    AutoModel.register(AliasBertConfig, AliasBertModel, exist_ok=True)
    family = register(
        dataclasses.replace(family_for("bert"), name="alias-bert", model_types=(ALIAS,), description="BERT again")
    )
    values = {k: v for k, v in tiny_config("bert", layers=2).to_dict().items() if k != "model_type"}
    torch.manual_seed(0)
    AliasBertModel(AliasBertConfig(**values)).save_pretrained(tmp_path / "model")
    build_tokenizer("bert").save_pretrained(tmp_path / "model")
    yield family, tmp_path / "model"
    unregister(family)


def test_a_family_registered_at_run_time_works_end_to_end(alias_family, train_csv):
    from edgetune.api import plan

    family, path = alias_family
    backbone = Backbone.from_pretrained(path)
    assert backbone.family is family and backbone.config.model_type == ALIAS
    assert backbone.config._attn_implementation == family.attn_implementation

    arch = ArchSummary.from_backbone(backbone, num_labels=3)
    costs = estimate_all(arch, CostConfig(seq_len=8))
    assert len(costs) == backbone.num_layers + 1 and costs[0].backward_flops > costs[-1].backward_flops

    result = plan(path, train_csv, tuner="lora", max_length=16, progress=False)
    assert result.model_type == ALIAS and 0 <= result.cut <= backbone.num_layers

    spec = SequenceClassifier(backbone, num_labels=3).top(1).spec
    assert native_support(spec) is None
    assert type(TopModel.from_spec(spec).blocks[0]).__module__ == "edgetune.native"
    assert token_positions({"model_type": ALIAS, "hf_config": backbone.config.to_dict()}) == 64


def test_unregister_forgets_the_family(alias_family):
    family, _ = alias_family
    unregister(family)
    assert ALIAS not in FAMILIES
    with pytest.raises(UnsupportedModelError):
        family_for(ALIAS)


def test_electra_from_export_to_a_personalized_prediction(tiny_model_dir, tmp_path):
    """The family added as one module (edgetune/families/electra.py): a tiny ELECTRA whose embeddings are
    narrower than its blocks is exported (trunk verified against torch, projection included), personalized on
    the device by training its top block, and predicts with the personal state in onnxruntime and torch alike."""
    import numpy as np

    from device_sim.device import Device
    from tests.devices import export_probe_package, fast, user_data

    model = tiny_model_dir("electra")
    assert Backbone.from_pretrained(model).family.name == "electra"
    package = export_probe_package(model, tmp_path / "pkg", top_onnx=True)
    with Device(package, threads=1) as device:
        result = device.personalize(user_data(60, seed=3), tmp_path / "p", fast(epochs=3))
        assert result.kept == "personal" and result.train_cut == 1  # blocks 2-3 trained
        texts = user_data(8, seed=9).texts
        onnx_logits = device.predictor(tmp_path / "p", backend="onnx").logits(texts)
        torch_logits = device.predictor(tmp_path / "p", backend="torch").logits(texts)
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4)
