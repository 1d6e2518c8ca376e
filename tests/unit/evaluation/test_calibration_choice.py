"""Which calibration evaluation applies: each method judged by the same cross-validated rule on validation alone."""

from __future__ import annotations

import numpy as np
import pytest
from scores_support import _softmax

from cxr.evaluation.calibrate import CRITERION, CalibrationChoice, choose_calibration, cross_validated_nll, fit
from cxr.model.calibrate import Calibrator


def _logits_and_labels(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is calibrated, and labels drawn from it."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=2.0, size=(n, 4))
    y = (_softmax(z).cumsum(1) > rng.random((n, 1))).argmax(1)
    return z, y


def test_already_calibrated_logits_get_no_scaling() -> None:
    """A map fitted on 300 images only fits their noise: none beats no scaling on held-out folds."""
    z, y = _logits_and_labels(300, 1)
    choice = choose_calibration(z, y, seed=0)
    assert choice.method == "none" and choice.calibrator == Calibrator()
    assert all(choice.cv_nll[m] > choice.cv_nll["none"] for m in ("temperature", "vector", "isotonic"))
    assert choice.fitted["temperature"].temperature != pytest.approx(1.0, abs=0.01)  # fitted, not applied
    assert choice.record()["temperature_applied"] is False and choice.record()["temperature"] == 1.0


def test_overconfidence_is_scaled_and_a_class_bias_needs_a_vector() -> None:
    z, y = _logits_and_labels(600, 2)
    over = choose_calibration(3.0 * z, y, seed=0)  # the same overconfidence in every class
    assert over.method in ("temperature", "vector")
    assert over.fitted["temperature"].temperature == pytest.approx(3.0, rel=0.2)
    skewed = z.copy()
    skewed[:, 0] += 2.0  # one class's logit pushed up: a temperature cannot undo it
    choice = choose_calibration(skewed, y, seed=0)
    assert choice.method == "vector"
    assert choice.cv_nll["vector"] < choice.cv_nll["temperature"] < choice.cv_nll["none"]
    record = choice.record()
    assert record["method"] == "vector" and record["criterion"] == CRITERION and record["folds"] == 5
    assert len(record["vector"]["scale"]) == 4 and record["temperature_applied"] is False
    # What is applied is the map fitted on all of validation, not a fold's.
    np.testing.assert_allclose(choice.calibrator.probabilities(skewed), fit("vector", skewed, y).probabilities(skewed))


def test_the_rule_is_the_lowest_held_out_nll_when_it_beats_none() -> None:
    fitted = {m: fit(m, *_logits_and_labels(80, 3)) for m in ("temperature", "vector", "isotonic")}
    pick = CalibrationChoice(fitted, {"none": 1.0, "temperature": 0.9, "vector": 0.95, "isotonic": 0.8}, 5)
    assert pick.method == "isotonic"
    tie = CalibrationChoice(fitted, {"none": 1.0, "temperature": 0.9, "vector": 0.9, "isotonic": 0.95}, 5)
    assert tie.method == "temperature"  # the simpler on a tie
    worse = CalibrationChoice(fitted, {"none": 0.7, "temperature": 0.9, "vector": 0.8, "isotonic": 0.75}, 5)
    assert worse.method == "none"


def test_each_fold_is_scored_by_a_map_fitted_without_it(monkeypatch) -> None:
    """Scored on the images it was fitted on, isotonic regression would always look best; held out, it cannot."""
    from cxr.evaluation import calibrate

    z, y = _logits_and_labels(200, 4)
    seen: list[int] = []
    real = calibrate.fit

    def spy(method, logits, labels):
        seen.append(len(labels))
        return real(method, logits, labels)

    monkeypatch.setattr(calibrate, "fit", spy)
    cv = cross_validated_nll(("isotonic",), z, y, folds=5, seed=0)
    assert seen == [160] * 10  # none and isotonic, on four folds of five, five times
    in_sample = calibrate.nll(real("isotonic", z, y).probabilities(z), y)
    assert in_sample < cv["isotonic"]
