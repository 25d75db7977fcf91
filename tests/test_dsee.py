import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from edgetune.backbones import Backbone
from edgetune.modeling import SequenceClassifier, TopModel
from edgetune.planner.cost import ArchSummary, CostConfig, estimate_cut
from edgetune.tuners import get_tuner
from edgetune.tuners.dsee import (
    SparseResidual,
    inference_flops,
    lowrank_sparse,
    prune_attention_heads,
    prune_unstructured,
    sparse_support,
)
from edgetune.tuners.dsee.layout import weight_out_in
from tests.conftest import build_model


def _clf(family: str, layers: int = 3, hidden: int = 32) -> SequenceClassifier:
    return SequenceClassifier(Backbone(build_model(family, layers=layers, hidden=hidden)), num_labels=3).eval()


def _data(clf: SequenceClassifier, cut: int, n: int = 12, length: int = 8):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 30, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[::3, length - 2 :] = 0
    labels = torch.randint(0, 3, (n,), generator=g)
    with torch.no_grad():
        hidden = clf.trunk_forward(ids, mask, cut)
    return hidden, mask, labels


def _train(tuner, top, hidden, mask, labels, steps: int = 10) -> None:
    torch.manual_seed(0)
    opt = torch.optim.AdamW(tuner.trainable_parameters(top).values(), lr=2e-2)
    top.train()
    for step in range(steps):
        torch.nn.functional.cross_entropy(top(hidden, mask), labels).backward()
        tuner.before_step(top, step, steps)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tuner.after_step(top, step, steps)
    top.eval()


def test_decomposition_finds_planted_sparse_entries():
    g = torch.Generator().manual_seed(0)
    low = torch.randn(40, 3, generator=g) @ torch.randn(3, 30, generator=g)
    planted = torch.randperm(1200, generator=g)[:25]
    w = low.clone()
    w.view(-1)[planted] += 20.0 * torch.sign(torch.randn(25, generator=g))
    w += 0.01 * torch.randn(40, 30, generator=g)
    _, s, idx = lowrank_sparse(w, rank=3, n=25, iters=4)
    assert idx.numel() == 25 == int((s != 0).sum())
    assert set(idx.tolist()) == set(planted.tolist())
    residual = [torch.linalg.norm(w - sum(lowrank_sparse(w, 3, 25, k)[:2])) for k in (1, 2, 4)]
    assert residual[0] >= residual[1] >= residual[2]
    with pytest.raises(ValueError, match="sparse entries"):
        lowrank_sparse(w, 3, 2000)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"r": 0}, "rank"),
        ({"sparse_n": 0}, "sparse_n"),
        ({"prune_ratio": 1.0}, "prune_ratio"),
        ({"head_prune_ratio": -0.1}, "head_prune_ratio"),
        ({"prune_scope": "rows"}, "prune_scope"),
    ],
)
def test_bad_settings_are_clear_errors(params, match):
    with pytest.raises(ValueError, match=match):
        get_tuner("dsee", **params)


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_masks_hold_exactly_n_entries_from_the_decomposition(family):
    clf = _clf(family)
    tuner = get_tuner("dsee", r=4, sparse_n=24, decomposition_rank=4)
    top = tuner.prepare(clf, cut=1)
    residuals = tuner.residuals(top)
    assert residuals and all(name.startswith(("blocks.0.", "blocks.1.")) for name in residuals)
    for module in residuals.values():
        rows, cols = module.dsee_index
        assert module.num_entries == 24 == torch.unique(rows * 10_000 + cols).numel()
        expect_rows, expect_cols = sparse_support(weight_out_in(module.base_layer), 4, 24, 3)
        assert torch.equal(rows, expect_rows) and torch.equal(cols, expect_cols)
    names = tuner.trainable_parameters(top)
    assert all("lora_" in n or n.endswith("dsee_values") or n.startswith(("head.", "norm.")) for n in names)
    arch = ArchSummary.from_backbone(clf.backbone, 3)
    profile = tuner.cost_profile(clf.backbone.blocks[0], family)
    assert tuner.num_trainable(top) == estimate_cut(arch, CostConfig(), 1, profile).trainable_params


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_training_changes_the_weights_only_at_the_mask_besides_the_low_rank_part(family):
    clf = _clf(family)
    tuner = get_tuner("dsee", r=2, sparse_n=16, dropout=0.0)
    top = tuner.prepare(clf, cut=1)
    pretrained = {n: weight_out_in(m.base_layer).detach().clone() for n, m in tuner.residuals(top).items()}
    hidden, mask, labels = _data(clf, 1)
    _train(tuner, top, hidden, mask, labels)
    layers = {}
    for name, module in tuner.residuals(top).items():
        lora = top.get_submodule(name.removesuffix(".base_layer"))
        low_rank = (lora.lora_B["default"].weight @ lora.lora_A["default"].weight) * lora.scaling["default"]
        x = torch.randn(5, lora.in_features)
        w = pretrained[name] + low_rank + module.dense_residual()
        bias = module.base_layer.bias
        with torch.no_grad():  # the module computes x (W + s B A + S)^T + b
            assert torch.allclose(lora(x), x @ w.T + bias, atol=1e-5)
        layers[name] = (lora, low_rank.detach(), module.dsee_index.clone(), module.dsee_values.detach().clone())
    with torch.no_grad():
        before = top(hidden, mask)
        tuner.merge(top)
        assert torch.allclose(top(hidden, mask), before, atol=1e-5)
    for name, (_lora, low_rank, (rows, cols), values) in layers.items():
        change = weight_out_in(top.get_submodule(name.removesuffix(".base_layer"))).detach() - pretrained[name]
        sparse_change = change - low_rank
        on_mask = torch.zeros_like(change, dtype=torch.bool)
        on_mask[rows, cols] = True
        assert sparse_change[~on_mask].abs().max() < 1e-6
        assert torch.allclose(sparse_change[rows, cols], values, atol=1e-6) and (values != 0).all()


def test_unstructured_pruning_hits_the_exact_ratio():
    with pytest.raises(ValueError, match="merge"):
        prune_unstructured(get_tuner("dsee").prepare(_clf("bert"), cut=1), 0.5)
    clf = _clf("bert")
    top = clf.detached_top(1)
    counts = prune_unstructured(top, 0.37)
    assert all(c["zeros"] == round(0.37 * c["size"]) for c in counts.values())
    top = clf.detached_top(1)
    counts = prune_unstructured(top, 0.37, scope="global")
    total = sum(c["size"] for c in counts.values())
    assert sum(c["zeros"] for c in counts.values()) == round(0.37 * total)
    assert len({round(c["zeros"] / c["size"], 3) for c in counts.values()}) > 1  # one ranking, unequal matrices
    flops = inference_flops(top, 16)
    assert flops["nonzero"] < 0.7 * flops["dense"]


def _block_flops(top: TopModel, hidden, mask) -> float:
    """FLOPs of the trained blocks as torch's profiler counts them."""
    kwargs = top.family.block_inputs(top.config, hidden, mask, top.rotary)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        for block in top.blocks:
            hidden = top.family.run_block(block, hidden, kwargs)
    return counter.get_total_flops()


def _profiled(measured: float, counted: dict, batch: int = 2) -> bool:
    """Whether torch's profiler prices the fused CPU attention kernel depends on what the process ran before:
    it must then match the projections alone or projections + attention, exactly."""
    return measured in (batch * counted["linear"], batch * counted["dense"])


@pytest.mark.parametrize("family", ["bert", "gpt2", "distilbert"])
def test_removing_heads_removes_parameters_and_measured_flops(family):
    from edgetune.tuners.dsee.heads import head_importance, head_slices

    clf = _clf(family, hidden=64)  # 2 heads of 32
    top = clf.detached_top(1).eval()
    hidden, mask, _ = _data(clf, 1, n=2, length=16)
    weakest = {1 + i: [int(head_importance(head_slices(b, family)).argmin())] for i, b in enumerate(top.blocks)}
    params = sum(p.numel() for p in top.blocks.parameters())
    counted = inference_flops(top, 16)
    assert _profiled(_block_flops(top, hidden, mask), counted)  # batch of 2 examples of 16 tokens

    assert prune_attention_heads(top, 0.5) == weakest
    assert top.config.pruned_heads == weakest and top.spec["hf_config"]["pruned_heads"] == {
        "1": weakest[1],
        "2": weakest[2],
    }
    assert sum(p.numel() for p in top.blocks.parameters()) < params
    after = inference_flops(top, 16)
    assert _profiled(_block_flops(top, hidden, mask), after)  # the profiler sees the smaller projections
    assert after["dense"] == after["nonzero"] < counted["dense"]
    assert after["dense"] - after["linear"] == 0.5 * (counted["dense"] - counted["linear"])  # half the heads attend
    assert [b["heads"] for b in after["blocks"]] == [1, 1]
    with torch.no_grad():
        out = top(hidden, mask)
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_llama_heads_are_masked_and_counted_honestly():
    clf = _clf("llama", hidden=64)
    top = clf.detached_top(1).eval()
    hidden, mask, _ = _data(clf, 1, n=2, length=16)
    before = inference_flops(top, 16)
    removed = prune_attention_heads(top, 0.5)
    after = inference_flops(top, 16)
    assert after["dense"] == before["dense"] and after["nonzero"] < before["nonzero"]  # dense kernels still run it
    assert _profiled(_block_flops(top, hidden, mask), before)
    attention = top.blocks[0].self_attn
    head, other = removed[1][0], 1 - removed[1][0]
    with torch.no_grad():
        out = top(hidden, mask)
        attention.q_proj.weight[head * 32 : (head + 1) * 32] = 5.0  # a masked head's queries no longer matter
        assert torch.allclose(top(hidden, mask), out, atol=1e-6)
        attention.q_proj.weight[other * 32 : (other + 1) * 32] = 5.0  # the remaining head's still do
        assert not torch.allclose(top(hidden, mask), out, atol=1e-3)


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_delta_round_trip_to_a_rebuilt_device_top(family, tmp_path):
    clf = _clf(family)
    clf.detached_top(1).save(tmp_path)
    tuner = get_tuner("dsee", r=2, sparse_n=16)
    top = tuner.prepare(clf, cut=1)
    hidden, mask, labels = _data(clf, 1)
    _train(tuner, top, hidden, mask, labels, steps=5)
    delta = tuner.delta_state(top)
    assert sum(k.endswith(".dsee_index") for k in delta) == len(tuner.residuals(top))

    device_top = TopModel.load(tmp_path).eval()
    device = get_tuner("dsee", **tuner.config.to_dict())
    device.prepare(device_top)
    for module in device.residuals(device_top).values():  # the device's own positions are overwritten by the delta
        module.set_positions(module.dsee_index[0], (module.dsee_index[1] + 1) % module.shape[1])
    device.load_delta(device_top, delta)
    with torch.no_grad():  # the device's plain-torch blocks: equal up to float rounding
        assert torch.allclose(device_top(hidden, mask), top(hidden, mask), atol=1e-5)
    for name, module in device.residuals(device_top).items():
        assert torch.equal(module.dsee_index, tuner.residuals(top)[name].dsee_index)

    key = next(k for k in delta if k.endswith(".dsee_index"))
    with pytest.raises(ValueError, match="does not fit"):
        device.load_delta(device_top, {k: v for k, v in delta.items() if k != key})
    repeated = dict(delta)
    repeated[key] = delta[key].clone()
    repeated[key][:, 1] = repeated[key][:, 0]
    with pytest.raises(ValueError, match="repeat"):
        device.load_delta(device_top, repeated)
    with pytest.raises(ValueError, match="shape"):
        device.load_delta(device_top, {**delta, key: delta[key][:, :3]})


def test_sparse_residual_wraps_linear_and_conv1d_alike():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 4)
    conv = Conv1D(4, 6)  # GPT-2 layout: weight (in, out)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.T)
        conv.bias.copy_(linear.bias)
    rows, cols = torch.tensor([0, 3, 2]), torch.tensor([5, 0, 2])
    outputs = []
    for layer in (linear, conv):
        module = SparseResidual(layer, rows, cols)
        with torch.no_grad():
            module.dsee_values.copy_(torch.tensor([1.0, -2.0, 0.5]))
        x = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(1))
        outputs.append(module(x))
        folded = module.fold()
        assert torch.allclose(folded(x), outputs[-1], atol=1e-6)
    assert torch.allclose(outputs[0], outputs[1], atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        SparseResidual(torch.nn.Linear(6, 4), torch.tensor([4]), torch.tensor([0]))
