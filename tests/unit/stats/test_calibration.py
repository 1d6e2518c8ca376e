"""Calibration: ECE and Brier, ECE's interval, and fitting temperature, vector and isotonic scaling."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scores_support import _softmax

from cxr.stats.bootstrap import resample_weights
from cxr.stats.calibration import (
    calibration,
    ece_with_ci,
    fit_isotonic,
    fit_temperature,
    fit_vector_scaling,
    nll,
)


def test_fit_temperature_recovers_two() -> None:
    rng = np.random.default_rng(0)
    n, k = 4000, 4
    z = rng.normal(scale=2.0, size=(n, k))
    p = _softmax(z)
    y = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    t = fit_temperature(2.0 * z, y)
    assert t == pytest.approx(2.0, rel=0.15)
    assert fit_temperature(z, y) == pytest.approx(1.0, rel=0.15)


def test_nll_at_a_temperature() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(scale=2.0, size=(50, 4))
    y = rng.integers(0, 4, 50)
    assert nll(z, y, 2.0) == pytest.approx(nll(z / 2.0, y))


def test_calibration_ece() -> None:
    rng = np.random.default_rng(0)
    n, k = 5000, 4
    z = rng.normal(scale=2.0, size=(n, k))
    p = _softmax(z)
    y = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    good = calibration(y, p)
    over = calibration(y, _softmax(3.0 * z))
    assert good["ece"] < 0.03
    assert over["ece"] > good["ece"] + 0.05
    assert over["brier"] > good["brier"]
    assert len(good["bin_count"]) == 15 and sum(good["bin_count"]) == n
    assert len(good["bin_confidence"]) == len(good["bin_accuracy"]) == 15
    json.dumps(good, allow_nan=False)


def _labels_drawn_from(p: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (p.cumsum(1) > rng.random((len(p), 1))).argmax(1)


def test_ece_interval_holds_the_point_and_is_that_of_the_resamples() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(scale=2.0, size=(400, 4))
    p = _softmax(2.0 * z)  # overconfident
    y = _labels_drawn_from(_softmax(z), 1)
    out = ece_with_ci(y, p, n_boot=300, seed=5)
    assert out["ece"] == pytest.approx(calibration(y, p)["ece"])
    assert out["ece_ci_low"] < out["ece"] < out["ece_ci_high"]
    # One replicate is the ECE of one resample (classes resampled within themselves), binned afresh.
    one = ece_with_ci(y, p, n_boot=1, seed=5)
    counts = next(resample_weights(y, 1, np.random.default_rng(5), True))[0].astype(int)
    idx = np.repeat(np.arange(len(y)), counts)
    assert one["ece_ci_low"] == pytest.approx(calibration(y[idx], p[idx])["ece"])
    assert ece_with_ci(y, p, n_boot=0)["ece_ci_low"] is None


def test_vector_scaling_recovers_a_scale_and_a_bias_per_class() -> None:
    rng = np.random.default_rng(0)
    n, k = 6000, 3
    z = rng.normal(scale=2.0, size=(n, k))
    y = _labels_drawn_from(_softmax(z), 2)
    scale, bias = np.array([0.5, 1.0, 2.0]), np.array([0.3, 0.0, -0.3])
    got_scale, got_bias = fit_vector_scaling((z - bias) / scale, y)  # logits the true map turns back into z
    np.testing.assert_allclose(got_scale, scale, rtol=0.15)
    np.testing.assert_allclose(got_bias - got_bias.mean(), bias - bias.mean(), atol=0.15)
    calibrated = _softmax((z - bias) / scale * got_scale + got_bias)
    assert nll(np.log(calibrated), y) < nll((z - bias) / scale, y) - 0.05


def test_isotonic_points_are_non_decreasing_per_class() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(scale=2.0, size=(500, 4))
    y = _labels_drawn_from(_softmax(z), 3)
    knots = fit_isotonic(_softmax(3.0 * z), y)
    assert len(knots) == 4
    for x, fx in knots:
        assert (np.diff(x) > 0).all() and (np.diff(fx) >= 0).all()
        assert 0.0 <= fx.min() and fx.max() <= 1.0
