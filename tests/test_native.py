"""The top's plain-torch blocks (edgetune.native) against transformers' on every covered family."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgetune.backbones import Backbone
from edgetune.modeling import SequenceClassifier, TopModel
from edgetune.native import native_support
from tests.conftest import FAMILIES, build_model


def _tops_of(family: str, cut: int = 1) -> tuple[TopModel, SequenceClassifier]:
    torch.manual_seed(0)
    classifier = SequenceClassifier(Backbone(build_model(family, layers=3)), num_labels=3)
    return classifier.top(cut), classifier


def _tops(family: str, cut: int = 1) -> tuple[TopModel, TopModel]:
    server, _ = _tops_of(family, cut)
    device = TopModel.from_spec(server.spec, native=True)
    missing, unexpected = device.load_state_dict(server.state_dict(), strict=False)
    assert not [k for k in missing if not k.startswith("rotary.")] and not unexpected
    return server, device


def _inputs(hidden: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 7, hidden, generator=g)
    mask = torch.ones(3, 7, dtype=torch.int64)
    mask[1, 5:] = 0  # padded rows: the mask must be honoured
    mask[2, 2:] = 0
    return x, mask


COVERED = [f for f in FAMILIES if f != "mpnet"]  # MPNet's relative position bias: transformers' blocks


@pytest.mark.parametrize("family", COVERED)
def test_plain_torch_top_equals_transformers_top(family):
    server, device = _tops(family)
    assert not any(type(b).__module__.startswith("transformers") for b in device.blocks)
    assert sorted(server.state_dict()) == sorted(k for k in device.state_dict())
    x, mask = _inputs(server.spec["hidden_size"])
    server.eval(), device.eval()
    want, got = server(x, mask), device(x, mask)
    assert torch.allclose(want, got, atol=1e-5), (want - got).abs().max()
    # the same gradients: training on either side is the same training
    want.pow(2).sum().backward()
    got.pow(2).sum().backward()
    grads = dict(server.named_parameters())
    for name, p in device.named_parameters():
        assert torch.allclose(p.grad, grads[name].grad, atol=1e-4, rtol=1e-3), name


def test_from_spec_picks_plain_torch_unless_told_or_not_covered():
    server, _ = _tops("bert")
    spec = server.spec
    assert type(TopModel.from_spec(spec).blocks[0]).__module__ == "edgetune.native"
    assert type(TopModel.from_spec(spec, native=False).blocks[0]).__module__.startswith("transformers")
    eager = {**spec, "hf_config": {**spec["hf_config"], "_attn_implementation_internal": "eager"}}
    assert type(TopModel.from_spec(eager).blocks[0]).__module__.startswith("transformers")
    odd = {**spec, "hf_config": {**spec["hf_config"], "hidden_act": "mish-ish"}}
    assert "activation" in native_support(odd)
    with pytest.raises(ValueError, match="activation"):
        TopModel.from_spec(odd, native=True)
    assert "model type" in native_support({**spec, "model_type": "t5"})
    mpnet, _ = _tops_of("mpnet")
    assert native_support(mpnet.spec) is not None  # not covered: a device rebuilds it with transformers' classes
    assert type(TopModel.from_spec(mpnet.spec).blocks[0]).__module__.startswith("transformers")


def test_dropout_is_active_in_training_mode_only():
    _, device = _tops("bert")
    x, mask = _inputs(device.spec["hidden_size"])
    device.train()
    a, b = device(x, mask), device(x, mask)
    assert not torch.allclose(a, b)  # tiny BERT configs keep transformers' 0.1 dropout
    device.eval()
    assert torch.equal(device(x, mask), device(x, mask))


def test_numpy_metrics_equal_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score

    from edgetune.metrics import classification_metrics

    rng = np.random.default_rng(0)
    for _ in range(5):
        y, p = rng.integers(0, 4, 40), rng.integers(0, 5, 40)
        got = classification_metrics(y, p, list("abcde"))
        present = sorted(set(y.tolist()) | set(p.tolist()))
        assert got["accuracy"] == pytest.approx(accuracy_score(y, p))
        assert got["macro_f1"] == pytest.approx(f1_score(y, p, labels=present, average="macro", zero_division=0))


def test_guard_split_is_stratified_disjoint_and_seeded():
    from device_sim.split import guard_split, validation_split

    labels = np.repeat(np.arange(4), [30, 20, 6, 2])
    rest, guard = guard_split(labels, 0.2, seed=0)
    assert len(guard) == 12 and set(rest) | set(guard) == set(range(len(labels))) and not set(rest) & set(guard)
    assert np.bincount(labels[guard], minlength=4).tolist() == [6, 4, 1, 1]  # each label its share
    assert np.array_equal(guard, guard_split(labels, 0.2, seed=0)[1])
    assert not np.array_equal(guard, validation_split(labels, 0.2, seed=0)[1])
    assert len(guard_split(labels, 0.0, seed=0)[1]) == 0


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "distilbert"])
@pytest.mark.parametrize("tuner_name", ["lora", "roselora", "dsee"])
def test_device_adapters_take_the_servers_delta(family, tuner_name):
    """peft's LoRA (server, transformers blocks) and the plain-torch LoRA (device) hold the same tensors under
    the same names: a delta trained on one gives the same outputs, gradients and merged top on the other."""
    from edgetune.tuners import get_tuner

    server, device = _tops(family)
    params = {"r": 4}
    if tuner_name == "dsee":
        params.update(sparse_n=8)
    torch.manual_seed(3)
    s_tuner = get_tuner(tuner_name, **params)
    s_tuner.prepare(server)
    with torch.no_grad():  # a trained-looking adapter: B no longer zero
        for name, p in server.named_parameters():
            if "lora_B" in name or "dsee_values" in name:
                p.normal_(0, 0.05)
    delta = s_tuner.delta_state(server)
    d_tuner = get_tuner(tuner_name, **params)
    d_tuner.prepare(device)
    assert not any("peft" in type(m).__module__ for m in device.modules())
    d_tuner.load_delta(device, delta)
    assert sorted(d_tuner.delta_state(device)) == sorted(delta)
    x, mask = _inputs(server.spec["hidden_size"])
    server.eval(), device.eval()
    want, got = server(x, mask), device(x, mask)
    assert torch.allclose(want, got, atol=1e-5)
    want.pow(2).sum().backward()
    got.pow(2).sum().backward()
    s_grads = {n: p.grad for n, p in server.named_parameters() if p.requires_grad}
    for name, p in device.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, s_grads[name], atol=1e-4, rtol=1e-3), name
    with torch.no_grad():
        merged_s, merged_d = s_tuner.merge(server)(x, mask), d_tuner.merge(device)(x, mask)
    assert torch.allclose(merged_s, merged_d, atol=1e-5)
    assert torch.allclose(merged_d, got.detach(), atol=1e-5)


def test_default_lora_targets_are_pefts():
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT

    from edgetune.tuners.lora.config import FALLBACK_TARGETS
    from edgetune.tuners.lora.native import DEFAULT_TARGETS

    for model_type, targets in DEFAULT_TARGETS.items():
        assert targets == list(PEFT.get(model_type) or FALLBACK_TARGETS[model_type]), model_type
