import pytest
import torch

from edgetune.backbones import Backbone
from edgetune.modeling import SequenceClassifier, TopModel
from edgetune.planner.cost import ArchSummary, CostConfig, estimate_cut
from edgetune.tuners import TUNERS, LoraTuner, get_tuner, tuner_from_dict
from tests.conftest import build_model


def _clf(family: str = "bert", layers: int = 4, seed: int = 0) -> SequenceClassifier:
    return SequenceClassifier(Backbone(build_model(family, layers=layers, seed=seed)), num_labels=3)


def _batch():
    torch.manual_seed(3)
    ids = torch.randint(5, 30, (3, 8))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return ids, mask


def _lora_module_layers(clf: SequenceClassifier) -> set[int]:
    from peft.tuners.lora import LoraLayer

    layers = set()
    for i, block in enumerate(clf.backbone.blocks):
        if any(isinstance(m, LoraLayer) for m in block.modules()):
            layers.add(i)
    return layers


def test_registry_and_errors():
    assert set(TUNERS) == {"full", "lora"}
    assert get_tuner("lora", r=4).config.r == 4
    assert tuner_from_dict(get_tuner("lora", r=2, layers=[4, 3]).to_dict()).config.layers == [3, 4]
    with pytest.raises(ValueError, match="unknown tuner"):
        get_tuner("magic")
    with pytest.raises(ValueError, match="bad parameters"):
        get_tuner("full", r=4)
    with pytest.raises(ValueError, match="rank"):
        get_tuner("lora", r=0)


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_full_tuner_freezes_the_trunk_and_trains_the_top(family):
    clf = _clf(family)
    tuner = get_tuner("full")
    top = tuner.prepare(clf, cut=2)
    trunk = [*clf.backbone.embeddings.parameters(), *clf.backbone.blocks[0].parameters()]
    trunk += list(clf.backbone.blocks[1].parameters())
    assert all(not p.requires_grad for p in trunk)
    assert all(p.requires_grad for p in top.parameters())
    arch = ArchSummary.from_backbone(clf.backbone, 3)
    assert tuner.num_trainable(top) == estimate_cut(arch, CostConfig(), 2).trainable_params


@pytest.mark.parametrize("family", ["bert", "distilbert", "gpt2", "llama"])
def test_lora_sits_only_in_the_chosen_blocks(family):
    clf = _clf(family)
    tuner = get_tuner("lora", r=4)
    top = tuner.prepare(clf, cut=1)
    assert _lora_module_layers(clf) == {1, 2, 3}
    names = tuner.trainable_parameters(top)
    assert names and all("lora_" in n or n.startswith(("head.", "norm.")) for n in names)
    # base weights of the adapted blocks stay frozen; the cost model counts the same trainable parameters
    assert not any(p.requires_grad for n, p in top.named_parameters() if "base_layer" in n)
    arch = ArchSummary.from_backbone(clf.backbone, 3)
    profile = tuner.cost_profile(clf.backbone.blocks[0], family)  # block 0 is below the cut: no adapters
    assert tuner.num_trainable(top) == estimate_cut(arch, CostConfig(), 1, profile).trainable_params


def test_lora_layers_option_and_head_only_plan():
    clf = _clf("bert")
    tuner = get_tuner("lora", r=2, layers=[4])
    tuner.prepare(clf, cut=1)
    assert _lora_module_layers(clf) == {3}
    with pytest.raises(ValueError, match="not among the trained blocks"):
        get_tuner("lora", layers=[1]).prepare(_clf("bert"), cut=2)
    head_only = _clf("bert")
    top = get_tuner("lora").prepare(head_only, cut=4)
    assert set(get_tuner("lora").trainable_parameters(top)) == {"head.weight", "head.bias"}
    assert _lora_module_layers(head_only) == set()


@pytest.mark.parametrize("family", ["bert", "gpt2", "qwen2"])
def test_lora_merge_keeps_outputs_and_removes_adapters(family):
    clf = _clf(family).eval()
    tuner = get_tuner("lora", r=4)
    top = tuner.prepare(clf, cut=2)
    with torch.no_grad():
        for name, p in top.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    ids, mask = _batch()
    with torch.no_grad():
        before = clf(ids, mask)
        tuner.merge(top)
        after = clf(ids, mask)
    assert not torch.allclose(before, _clf(family).eval()(ids, mask), atol=1e-3)  # the adapters mattered
    assert torch.allclose(before, after, atol=1e-5)
    assert _lora_module_layers(clf) == set()
    assert set(clf.model.state_dict()) == set(build_model(family, layers=4).state_dict())


@pytest.mark.parametrize("tuner_name", ["full", "lora"])
def test_delta_moves_from_server_view_to_a_rebuilt_device_top(tuner_name, tmp_path):
    """The device rebuilds the top from its spec + weights, prepares it, loads the server's delta."""
    clf = _clf("llama").eval()
    clf.detached_top(2).save(tmp_path)  # the pretrained top as shipped in a package
    server = get_tuner(tuner_name, **({"r": 4} if tuner_name == "lora" else {}))
    top = server.prepare(clf, cut=2)
    with torch.no_grad():
        for p in server.trainable_parameters(top).values():
            p.add_(0.1 * torch.randn_like(p))
    delta = server.delta_state(top)

    device_top = TopModel.load(tmp_path).eval()
    device = get_tuner(server.name, **server.config.to_dict())
    device.prepare(device_top)
    device.load_delta(device_top, delta)
    ids, mask = _batch()
    with torch.no_grad():
        hidden = clf.trunk_forward(ids, mask, 2)
        assert torch.allclose(device_top(hidden, mask), clf(ids, mask), atol=1e-5)
    bad = dict(delta)
    bad.pop(next(iter(bad)))
    with pytest.raises(ValueError, match="does not fit"):
        device.load_delta(device_top, bad)


def test_tuner_needs_a_cut_for_a_full_classifier():
    with pytest.raises(ValueError, match="cut"):
        get_tuner("full").prepare(_clf())
    top = _clf().detached_top(1)
    with pytest.raises(ValueError, match="cut 1"):
        get_tuner("full").prepare(top, cut=2)
    assert isinstance(get_tuner("lora"), LoraTuner)
