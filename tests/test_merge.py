import pytest
import torch

from edgetune.merge import MergeError, is_layer_param, merge_state_dicts, rankmean_coefficients


def _state(changes: dict[str, float], base: float = 1.0) -> dict[str, torch.Tensor]:
    """Layer modules a/b/c (weight of 2 values) + a non-layer embedding, shifted from ``base``."""
    out = {}
    for mod in ("a", "b", "c"):
        out[f"encoder.layer.0.{mod}.weight"] = torch.full((2, 1), base + changes.get(mod, 0.0))
    out["embeddings.weight"] = torch.full((3, 1), base + changes.get("emb", 0.0))
    return out


BASE = _state({})


def test_layer_param_detection():
    assert is_layer_param("model.encoder.layer.3.attention.self.query.weight")
    assert is_layer_param("transformer.h.0.attn.c_attn.weight") and is_layer_param("model.layers.1.mlp.up.weight")
    assert is_layer_param("blocks.0.output.dense.bias")
    assert not is_layer_param("model.embeddings.word_embeddings.weight") and not is_layer_param("head.weight")


def test_rankmean_coefficients_hand_computed():
    m1 = _state({"a": 0.01, "b": 0.02, "c": 0.03})  # change ranks 1, 2, 3 -> 1/3, 2/3, 1
    m2 = _state({"a": 0.03, "b": 0.02, "c": 0.01})  # ranks 3, 2, 1 -> 1, 2/3, 1/3
    coeffs = rankmean_coefficients(BASE, [m1, m2], granularity="module")
    assert coeffs["encoder.layer.0.a"].tolist() == pytest.approx([0.25, 0.75])
    assert coeffs["encoder.layer.0.b"].tolist() == pytest.approx([0.5, 0.5])
    assert coeffs["encoder.layer.0.c"].tolist() == pytest.approx([0.75, 0.25])
    merged, report = merge_state_dicts(BASE, [m1, m2], "rankmean", granularity="module")
    assert merged["encoder.layer.0.a.weight"][0].item() == pytest.approx(0.25 * 1.01 + 0.75 * 1.03)
    assert merged["encoder.layer.0.c.weight"][0].item() == pytest.approx(0.75 * 1.03 + 0.25 * 1.01)
    assert merged["embeddings.weight"][0].item() == pytest.approx(1.0)  # non-layer: plain average
    assert report.layer_modules == 3 and report.other_tensors == 1


def test_order_invariance_and_identity():
    m1 = _state({"a": 0.01, "b": 0.05, "c": 0.02, "emb": 0.01})
    m2 = _state({"a": 0.04, "b": 0.01, "c": 0.03})
    m3 = _state({"a": 0.02, "b": 0.02, "c": 0.06, "emb": -0.02})
    for method in ("rankmean", "average", "task_arithmetic"):
        ab, _ = merge_state_dicts(BASE, [m1, m2, m3], method)
        ba, _ = merge_state_dicts(BASE, [m3, m1, m2], method)
        for k in ab:
            assert torch.allclose(ab[k], ba[k])
    same, _ = merge_state_dicts(BASE, [m1, m1], "rankmean")
    for k in m1:
        assert torch.allclose(same[k], m1[k])


def test_task_arithmetic_and_average():
    m1 = _state({"a": 0.02})
    m2 = _state({"a": 0.04})
    ta, _ = merge_state_dicts(BASE, [m1, m2], "task_arithmetic", scale=0.5)
    assert ta["encoder.layer.0.a.weight"][0].item() == pytest.approx(1.0 + 0.5 * (0.02 + 0.04))
    avg, _ = merge_state_dicts(None, [m1, m2], "average")
    assert avg["encoder.layer.0.a.weight"][0].item() == pytest.approx(1.03)


def test_refuses_other_bases_keys_and_shapes():
    m1 = _state({"a": 0.01})
    stranger = _state({"a": 5.0, "b": -3.0, "c": 4.0, "emb": 2.0})
    with pytest.raises(MergeError, match="not fine-tuned from this base"):
        merge_state_dicts(BASE, [m1, stranger])
    other_keys = dict(m1)
    other_keys["extra.weight"] = torch.zeros(1)
    with pytest.raises(MergeError, match="different tensors"):
        merge_state_dicts(BASE, [m1, other_keys])
    wrong_shape = dict(m1)
    wrong_shape["embeddings.weight"] = torch.ones(4, 1)
    with pytest.raises(MergeError, match="different shapes"):
        merge_state_dicts(BASE, [m1, wrong_shape])
    with pytest.raises(MergeError, match="at least 2"):
        merge_state_dicts(BASE, [m1])
    with pytest.raises(MergeError, match="needs the base"):
        merge_state_dicts(None, [m1, m1], "rankmean")
    with pytest.raises(MergeError, match="unknown merge method"):
        merge_state_dicts(BASE, [m1, m1], "magic")


def test_layer_granularity_ranks_whole_blocks():
    """Blocks 0..2; model 1 changed block 2 most, model 2 block 0 most (as in the reference code, per layer)."""
    base = {f"model.layers.{i}.mlp.weight": torch.ones(2, 2) for i in range(3)}
    base["model.norm.weight"] = torch.ones(2, 1)

    def shifted(deltas):
        out = {k: v + d for (k, v), d in zip(base.items(), deltas)}
        return out

    m1 = shifted([0.01, 0.02, 0.03, 0.1])
    m2 = shifted([0.03, 0.02, 0.01, 0.3])
    coeffs = rankmean_coefficients(base, [m1, m2])  # default: layer
    assert sorted(coeffs) == [f"model.layers.{i}" for i in range(3)]
    assert coeffs["model.layers.0"].tolist() == pytest.approx([0.25, 0.75])
    assert coeffs["model.layers.2"].tolist() == pytest.approx([0.75, 0.25])
    merged, report = merge_state_dicts(base, [m1, m2])
    assert merged["model.layers.0.mlp.weight"][0, 0].item() == pytest.approx(0.25 * 1.01 + 0.75 * 1.03)
    assert merged["model.norm.weight"][0, 0].item() == pytest.approx(1.2)  # outside the blocks: averaged
    assert report.layer_modules == 3
    with pytest.raises(MergeError, match="granularity"):
        rankmean_coefficients(base, [m1, m2], granularity="atoms")
