import numpy as np
import pytest

from edgetune.planner.salf import (
    SALFConfig,
    block_units,
    calibrate_temperature,
    cosine_to_basis,
    deviation,
    expected_gains,
    fit_scaling_law,
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
