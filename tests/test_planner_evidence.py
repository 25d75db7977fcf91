"""The planner's evidence: exact leave-one-out ridge probes, paired layer differences, an order-free sample."""

import numpy as np
import pytest

from edgetune.data import TextDataset, order_invariant_sample
from edgetune.planner.evidence import (
    RIDGE_PENALTIES,
    LayerEvidence,
    bootstrap_indices,
    layer_evidence,
    ridge_leave_one_out,
)


def _brute_force_loo(x: np.ndarray, y: np.ndarray, c: int, lam: float) -> np.ndarray:
    """Refit the same ridge (standardized on the full sample, large constant column) without each example."""
    xs = (x - x.mean(0)) / np.maximum(x.std(0), 1e-6)
    xs = np.hstack([xs, np.full((len(xs), 1), 1e3)])
    onehot = np.eye(c)[y]
    out = np.zeros_like(onehot)
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        a = xs[keep]
        w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ onehot[keep])
        out[i] = xs[i] @ w
    return out


def test_leave_one_out_equals_refitting_without_each_example():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 10)
    x = np.eye(3)[y] @ rng.standard_normal((3, 5)) + rng.standard_normal((30, 5))
    loo = ridge_leave_one_out(x, y, 3)
    assert loo.penalty in RIDGE_PENALTIES
    scores = _brute_force_loo(x, y, 3, loo.penalty)
    np.testing.assert_allclose(loo.sq_error, ((np.eye(3)[y] - scores) ** 2).sum(1), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(loo.wrong, scores.argmax(1) != y)


def test_leave_one_out_does_not_memorize_noise():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 60)
    noise = rng.standard_normal((120, 200))  # more features than examples: a training fit would be perfect
    assert ridge_leave_one_out(noise, y, 2).wrong.mean() > 0.3
    separable = np.eye(2)[y] * 4 + 0.1 * rng.standard_normal((120, 2))
    assert ridge_leave_one_out(separable, y, 2).wrong.mean() == 0.0


def test_recoverable_is_a_paired_gap_and_never_negative():
    sq = np.array([[0.2, 0.2, 0.2, 0.2], [0.5, 0.5, 0.5, 0.5], [0.6, 0.6, 0.6, 0.6]])
    ev = LayerEvidence(np.zeros_like(sq, bool), sq, [1.0] * 3)
    assert ev.head_points() == pytest.approx(60.0)
    assert ev.recoverable_points() == pytest.approx(40.0)  # layer 0 is 0.4 lower on every example
    top_best = LayerEvidence(np.zeros_like(sq, bool), sq[::-1].copy(), [1.0] * 3)
    assert top_best.recoverable_points() == 0.0
    assert ev.recoverable_points(np.array([0, 0, 1])) == pytest.approx(40.0)


def test_layer_evidence_shapes_and_bootstrap():
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1], 20)
    pooled = rng.standard_normal((3, 40, 4))
    pooled[1] += 3 * (2 * y - 1)[:, None] * np.array([1.0, -1.0, 1.0, -1.0])
    ev = layer_evidence(pooled, y, 2)
    assert ev.wrong.shape == ev.sq_error.shape == (3, 40)
    assert ev.error_points()[1] < ev.error_points()[0]
    idx = bootstrap_indices(40, 7, seed=0)
    assert idx.shape == (7, 40) and idx.min() >= 0 and idx.max() < 40
    np.testing.assert_array_equal(idx, bootstrap_indices(40, 7, seed=0))


def test_order_invariant_sample_ignores_the_row_order():
    texts = [f"text {i}" for i in range(300)]
    labels = ["a" if i % 3 else "b" for i in range(300)]
    data = TextDataset(texts, labels)
    rng = np.random.default_rng(0)
    first = order_invariant_sample(data, 64, seed=0)
    for _ in range(5):
        perm = rng.permutation(300)
        shuffled = TextDataset([texts[i] for i in perm], [labels[i] for i in perm])
        again = order_invariant_sample(shuffled, 64, seed=0)
        assert again.texts == first.texts and again.labels == first.labels
    assert sorted(first.labels).count("b") == round(64 * 100 / 300)  # stratified
    assert order_invariant_sample(data, 64, seed=1).texts != first.texts  # the seed draws another sample
    assert set(first.texts) <= set(order_invariant_sample(data, 128, seed=0).texts)  # growing keeps the sample
