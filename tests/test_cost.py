import pytest

from edgetune.planner.cost import ArchSummary, Budget, CostConfig, block_forward_flops, estimate_all, estimate_cut

ARCH = ArchSummary(
    num_layers=4,
    hidden_size=8,
    intermediate_size=32,
    num_heads=2,
    block_params=(100,) * 4,
    embedding_params=1000,
    norm_params=16,
    num_labels=3,
)


def test_flops_formula_by_hand():
    assert block_forward_flops(100, 10, 8) == 2 * 100 * 10 + 4 * 10 * 10 * 8
    cfg = CostConfig(seq_len=10, batch_size=2, num_examples=5)
    c = estimate_cut(ARCH, cfg, 3)
    f = 2 * 100 * 10 + 4 * 100 * 8
    head = 2 * 8 * 3
    assert c.forward_flops == 4 * f + head
    assert c.backward_flops == 2 * (f + head)
    assert c.backward_frac == pytest.approx((f + head) / (4 * f + head))
    assert c.trainable_params == 100 + 16 + 8 * 3 + 3
    # head only: its input needs a gradient only for a trained final norm
    assert estimate_cut(ARCH, cfg, 4).backward_flops == 2 * head
    no_norm = ArchSummary(**{**ARCH.to_dict(), "block_params": ARCH.block_params, "norm_params": 0})
    assert estimate_cut(no_norm, cfg, 4).backward_flops == head


def test_costs_fall_monotonically_with_the_cut():
    costs = estimate_all(ARCH, CostConfig())
    assert costs[0].backward_frac == 1.0
    for a, b in zip(costs, costs[1:]):
        assert b.backward_flops < a.backward_flops
        assert b.train_memory_mb < a.train_memory_mb
        assert b.device_seconds < a.device_seconds


def test_memory_breakdown_cached_vs_naive():
    cached = estimate_cut(ARCH, CostConfig(cached=True, num_examples=10, seq_len=4), 2)
    naive = estimate_cut(ARCH, CostConfig(cached=False, num_examples=10, seq_len=4), 2)
    assert cached.memory_bytes["frozen_weights"] == 0
    assert naive.memory_bytes["frozen_weights"] == 4 * (200 + 1000)
    assert cached.memory_bytes["cached_features"] == 10 * 4 * 8 * 4
    assert naive.memory_bytes["cached_features"] == 0
    assert cached.memory_bytes["adam_states"] == 8 * cached.trainable_params
    # naive runs the whole model forward every step
    assert naive.train_step_flops > cached.train_step_flops


def test_budget_violations():
    c = estimate_cut(ARCH, CostConfig(), 1)
    assert Budget().fits(c)
    v = Budget(max_backward_frac=0.2).violations(c)
    assert len(v) == 1 and "backward FLOPs" in v[0]
    assert not Budget(max_train_memory_mb=c.train_memory_mb / 2).fits(c)
    assert Budget(max_train_memory_mb=c.train_memory_mb * 2).fits(c)
    with pytest.raises(ValueError):
        Budget(max_backward_frac=-1)


def test_cut_out_of_range():
    with pytest.raises(ValueError):
        estimate_cut(ARCH, CostConfig(), 5)


def test_lora_costs_by_hand():
    from edgetune.planner.cost import TunerCost

    cfg = CostConfig(seq_len=10, batch_size=2, num_examples=5)
    lora = TunerCost(weight_grad_fraction=0.0, adapter_params=6)
    c = estimate_cut(ARCH, cfg, 2, lora)
    full = estimate_cut(ARCH, cfg, 2)
    n, d, head = 10, 8, 2 * 8 * 3
    block_bwd = 2 * 100 * n + 8 * n * n * d + 4 * 6 * n  # input gradients, attention, adapters; no weight gradients
    assert c.backward_flops == 2 * block_bwd + 2 * head
    assert c.backward_flops < full.backward_flops
    assert c.backward_frac == pytest.approx(c.backward_flops / estimate_cut(ARCH, cfg, 0).backward_flops)
    assert c.trainable_params == 2 * 6 + 16 + 8 * 3 + 3
    assert c.memory_bytes["frozen_weights"] == 4 * 200  # the adapted blocks' base weights, even with a cache
    assert c.forward_flops == full.forward_flops + 2 * 2 * 6 * n
    with pytest.raises(ValueError):
        TunerCost(weight_grad_fraction=1.5)


def test_plans_price_the_tuner(tiny_model_dir, train_csv):
    from edgetune.api import load_model, plan

    model = load_model(tiny_model_dir("bert", layers=4), max_length=16)
    full = plan(model, train_csv, planner="topk", progress=False)
    lora = plan(model, train_csv, planner="topk", tuner="lora", tuner_params={"r": 2}, progress=False)
    for f, lo in zip(full.rows[:-1], lora.rows[:-1]):
        assert lo.backward_flops < f.backward_flops and lo.trainable_params < f.trainable_params
    assert lora.rows[-1].trainable_params == full.rows[-1].trainable_params  # head only: nothing to adapt
