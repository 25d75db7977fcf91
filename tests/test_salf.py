from types import SimpleNamespace

import numpy as np
import pytest

from edgetune.planner import Budget, choose_cut
from edgetune.planner.base import allowed_cuts_mask
from edgetune.planner.salf import (
    SALFConfig,
    agreement,
    block_units,
    calibrate_temperature,
    cheapest_within,
    cosine_to_basis,
    deviation,
    expected_gains,
    fit_scaling_law,
    loss_amplitude,
    predicted_losses,
    probe_basis,
    readout_basis,
)


def test_deviation_is_log_c_when_cosines_are_equal():
    cos = np.zeros((10, 4))
    labels = np.arange(10) % 4
    assert deviation(cos, labels, 5.0) == pytest.approx(np.log(4))


def test_deviation_falls_as_cosine_aligns_with_true_label():
    labels = np.array([0, 1, 2, 0])
    aligned = np.eye(3)[labels] * 0.9
    assert deviation(aligned, labels, 10.0) < deviation(aligned * 0.1, labels, 10.0) < np.log(3)


def test_temperature_calibration_minimizes_deviation():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    cos = 0.2 * np.eye(3)[labels] + 0.1 * rng.standard_normal((200, 3))
    tau = calibrate_temperature(cos, labels)
    best = deviation(cos, labels, tau)
    for other in (tau / 2, tau * 2):
        assert best <= deviation(cos, labels, other) + 1e-9


def test_readout_basis_equals_pseudo_inverse_columns():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((50, 8))
    tokens = [3, 17, 40]
    expected = np.linalg.pinv(w)[:, tokens]
    assert np.allclose(readout_basis(w, tokens), expected, atol=1e-8)


def test_probe_basis_points_to_its_class():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((3, 16)) * 3
    labels = np.repeat(np.arange(3), 40)
    feats = centers[labels] + rng.standard_normal((120, 16))
    basis = probe_basis(feats, labels, 3, 1.0, 0)
    assert basis.shape == (16, 3)
    cos = cosine_to_basis(feats, basis)
    assert (cos.argmax(1) == labels).mean() > 0.95


def test_binary_probe_basis():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 30)
    feats = np.where(labels[:, None] == 1, 2.0, -2.0) + rng.standard_normal((60, 5))
    cos = cosine_to_basis(feats, probe_basis(feats, labels, 2, 1.0, 0))
    assert (cos.argmax(1) == labels).mean() > 0.95


def test_scaling_law_fit_recovers_known_law():
    x = np.arange(1, 13, dtype=float)
    d = 2.0 * x**-0.7 + 0.3
    law = fit_scaling_law(x, d)
    assert law.ok
    assert law.a == pytest.approx(2.0, rel=1e-3) and law.alpha == pytest.approx(0.7, rel=1e-3)
    assert law.e == pytest.approx(0.3, abs=1e-3)


def test_expected_gain_is_excess_over_the_law():
    x = block_units([10, 10, 10, 10, 10])
    assert x.tolist() == [1, 2, 3, 4, 5, 6]
    smooth = 1.5 * x**-0.5 + 0.2
    _, g_smooth, _ = expected_gains(smooth, x)
    assert np.nanmax(np.abs(g_smooth)) < 1e-3  # a curve that follows the law has no excess gain
    bumped = smooth.copy()
    bumped[4:] -= 0.3  # layer 4 removes far more deviation than the law expects
    gains, expected, _ = expected_gains(bumped, x)
    assert np.isnan(gains[0]) and np.isnan(expected[0])
    assert int(np.nanargmax(expected)) == 4


def test_config_validation():
    with pytest.raises(ValueError, match="basis"):
        SALFConfig(basis="nope")
    with pytest.raises(ValueError, match="temperature"):
        SALFConfig(temperature=0)


# -- the cost-aware policy ----------------------------------------------------------------------
def test_predicted_losses_follow_the_law_and_are_zero_at_full_depth():
    units = np.array([4.0, 3.0, 2.0, 1.0, 0.0])  # cuts 0..4 of a 4-block model
    losses = predicted_losses(10.0, units, alpha=2.0)
    assert losses[0] == 0.0
    assert np.all(np.diff(losses) > 0)  # freezing more never predicts less loss
    assert losses[4] == pytest.approx(10.0 * (1.0 - 5.0**-2.0))
    assert losses[3] == pytest.approx(10.0 * (2.0**-2.0 - 5.0**-2.0))


def test_amplitude_counts_what_a_lower_latent_space_knows():
    # the head leaves 30 (squared error x100); no lower latent space does better: only the gamma share
    assert loss_amplitude(30.0, 0.0, scale=0.1, recoverable=2.0) == pytest.approx(3.0)
    # a lower latent space is 10 lower: error that training the top blocks can win back
    assert loss_amplitude(30.0, 10.0, scale=0.1, recoverable=2.0) == pytest.approx(3.0 + 20.0)
    assert loss_amplitude(30.0, -5.0, scale=0.1, recoverable=2.0) == pytest.approx(3.0)


def test_cheapest_cut_within_tolerance_on_a_hand_made_curve():
    losses = np.array([0.0, 0.1, 0.4, 0.9, 2.5, 6.0])  # cut 5 = head only
    costs = [SimpleNamespace(backward_frac=1 - k / 5) for k in range(6)]
    allowed = np.ones(6, bool)
    assert choose_cut(cheapest_within(losses, 1.0, allowed), costs, Budget()) == 3
    assert choose_cut(cheapest_within(losses, 0.3, allowed), costs, Budget()) == 1
    assert choose_cut(cheapest_within(losses, 10.0, allowed), costs, Budget()) == 5  # head only is enough
    # head only forbidden (min_trainable_layers = 1): the next cheapest within tolerance
    assert choose_cut(cheapest_within(losses, 10.0, allowed_cuts_mask(5, 1)), costs, Budget()) == 4


def test_budgets_bind_the_cheapest_policy():
    losses = np.array([0.0, 0.1, 0.4, 0.9, 2.5, 6.0])
    costs = [SimpleNamespace(backward_frac=1 - k / 5) for k in range(6)]
    budget = Budget(max_backward_frac=0.5)
    # tolerance 0.3 wants cut 1 (80% of the backward FLOPs): over budget, so the least lossy fitting cut (3)
    assert choose_cut(cheapest_within(losses, 0.3, np.ones(6, bool)), costs, budget) == 3


def test_agreement_counts_resamples_that_pick_the_same_cut():
    scores = np.array([-2.0, 0.0, 0.0, -1.0])  # cheapest within tolerance: cut 2
    same = np.array([[-3.0, 0.0, 0.0, -2.0], [-1.0, -0.5, 0.0, -4.0]])  # both pick 2
    other = np.array([[0.0, -1.0, -2.0, -3.0]])  # picks 0
    assert agreement(scores, same) == 1.0
    assert agreement(scores, np.vstack([same, other, other])) == 0.5
    assert agreement(scores, np.zeros((0, 4))) == 1.0


def test_sample_limit_follows_the_time_budget():
    cfg = SALFConfig(sample_size=256, max_sample_size=1024, plan_time_fraction=0.05)
    assert cfg.sample_limit(100) == 100  # the whole (small) set
    assert cfg.sample_limit(1000) == 256  # 5% of an epoch affords 150 traces: never less than the sample size
    assert cfg.sample_limit(4000) == 600
    assert cfg.sample_limit(100_000) == 1024
    with pytest.raises(ValueError, match="max_sample_size"):
        SALFConfig(sample_size=512, max_sample_size=256)
    with pytest.raises(ValueError, match="confidence"):
        SALFConfig(confidence=1.5)


def test_policy_validation():
    with pytest.raises(ValueError, match="policy"):
        SALFConfig(policy="cheapest-ever")
    with pytest.raises(ValueError, match="tolerance"):
        SALFConfig(tolerance=-1)


def test_default_sample_limit_lets_an_uncertain_plan_read_a_small_set_whole():
    cfg = SALFConfig()
    assert cfg.sample_limit(1000) == 1000  # a third of an epoch affords every example of a small set
    assert cfg.sample_limit(200) == 200
    assert cfg.sample_limit(50_000) == cfg.max_sample_size == 2048


def _noisy_evidence(rng: np.random.Generator, gap: float, n: int = 400, layers: int = 7):
    """Per-example squared errors: the top's, and lower layers equal to it on average less ``gap``, each with
    its own per-example noise (what a probe on a sample of ``n`` examples measures)."""
    from edgetune.planner.evidence import LayerEvidence

    top = rng.uniform(0.2, 0.4, n)
    sq = np.stack([np.clip(top - gap + rng.normal(0, 0.25, n), 0, 2) for _ in range(layers - 1)] + [top])
    return LayerEvidence(np.zeros_like(sq, bool), sq, [1.0] * layers)


def test_a_noisy_curve_does_not_flip_the_decision():
    from edgetune.planner.base import best_cut
    from edgetune.planner.salf import SALFPlanner

    units = block_units([1] * 6)[-1] - block_units([1] * 6)
    planner = SALFPlanner(SALFConfig(resamples=0))
    allowed = np.ones(7, bool)
    chosen = {}
    for gap in (0.0, 0.25):  # nothing recoverable; a lower layer clearly better
        cuts = set()
        for draw in range(20):
            losses, _ = planner._losses(_noisy_evidence(np.random.default_rng(draw), gap), units, seed=0)
            cuts.add(best_cut(cheapest_within(losses, 1.0, allowed)))
        assert len(cuts) == 1, (gap, cuts)
        chosen[gap] = cuts.pop()
    assert chosen[0.0] == 5 and chosen[0.25] < 3  # one block when nothing is recoverable, deep when much is
    # without the standard-error margin, the same noise moves the zero-gap task's cut
    naive = SALFPlanner(SALFConfig(resamples=0, recoverable_margin=0.0))
    cuts = {
        best_cut(cheapest_within(naive._losses(_noisy_evidence(np.random.default_rng(d), 0.0), units, 0)[0], 1.0,
                                 allowed))
        for d in range(20)
    }  # fmt: skip
    assert len(cuts) > 1
