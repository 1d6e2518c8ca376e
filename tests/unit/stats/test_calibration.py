"""Calibration: the fitted temperature, the held-out check that decides whether to use it, ECE and Brier."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scores_support import _softmax

from cxr.stats.calibration import TEMPERATURE_CRITERION, calibration, fit_temperature, nll, temperature_check


def test_fit_temperature_recovers_two() -> None:
    rng = np.random.default_rng(0)
    n, k = 4000, 4
    z = rng.normal(scale=2.0, size=(n, k))
    p = _softmax(z)
    y = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    t = fit_temperature(2.0 * z, y)
    assert t == pytest.approx(2.0, rel=0.15)
    assert fit_temperature(z, y) == pytest.approx(1.0, rel=0.15)


def test_temperature_is_used_only_when_it_helps_on_held_out_validation() -> None:
    rng = np.random.default_rng(0)
    n, k = 300, 4
    z = rng.normal(scale=2.0, size=(n, k))
    y = (_softmax(z).cumsum(1) > rng.random((n, 1))).argmax(1)
    over = temperature_check(3.0 * z, y)  # overconfident logits: scaling helps on every held-out fold
    assert over["helps"] and over["valid_cv_nll_scaled"] < over["valid_cv_nll_unscaled"]
    assert over["criterion"] == TEMPERATURE_CRITERION and over["folds"] == 5
    # Already calibrated: the temperature fitted on these images (not exactly 1) only fits their noise.
    rng = np.random.default_rng(1)
    z = rng.normal(scale=2.0, size=(n, k))
    y = (_softmax(z).cumsum(1) > rng.random((n, 1))).argmax(1)
    calibrated = temperature_check(z, y)
    assert fit_temperature(z, y) != pytest.approx(1.0, abs=0.01)
    assert not calibrated["helps"] and calibrated["valid_cv_nll_scaled"] > calibrated["valid_cv_nll_unscaled"]
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
