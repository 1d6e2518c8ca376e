"""The calibration map as applied (evaluation's figures, the galleries, the served model): its record and its maths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxr.model.calibrate import ISOTONIC_FLOOR, Calibrator, read_calibration
from cxr.model.inference import softmax

LOGITS = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-3.0, 4.0, 0.0]])


@pytest.mark.parametrize(
    "cal",
    [
        Calibrator(),
        Calibrator("temperature", temperature=1.7),
        Calibrator("vector", scale=(0.5, 1.0, 2.0), bias=(0.1, 0.0, -0.2)),
        Calibrator("isotonic", knots=(((0.0, 0.5, 1.0), (0.0, 0.2, 0.9)),) * 3),
    ],
    ids=lambda c: c.method,
)
def test_a_record_read_back_gives_the_same_probabilities(cal: Calibrator, tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({**cal.record(), "threshold": 0.4}))
    again = read_calibration(path)
    assert again == cal
    probs = again.probabilities(LOGITS)
    np.testing.assert_allclose(probs, cal.probabilities(LOGITS))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


def test_each_map_is_its_formula() -> None:
    np.testing.assert_allclose(Calibrator().probabilities(LOGITS), softmax(LOGITS))
    np.testing.assert_allclose(Calibrator("temperature", temperature=2.0).probabilities(LOGITS), softmax(LOGITS / 2))
    vector = Calibrator("vector", scale=(0.5, 1.0, 2.0), bias=(0.1, 0.0, -0.2))
    np.testing.assert_allclose(vector.probabilities(LOGITS), softmax(LOGITS * [0.5, 1.0, 2.0] + [0.1, 0.0, -0.2]))


def test_isotonic_is_the_fitted_regression_floored_and_renormalised() -> None:
    """np.interp on the fitted points is scikit-learn's predict (clipped outside them): the served model needs no
    scikit-learn to apply what evaluation fitted."""
    from sklearn.isotonic import IsotonicRegression

    from cxr.stats.calibration import fit_isotonic

    rng = np.random.default_rng(0)
    z = rng.normal(scale=2.0, size=(300, 3))
    y = rng.integers(0, 3, 300)
    p = softmax(z)
    knots = fit_isotonic(p, y)
    cal = Calibrator("isotonic", knots=tuple((tuple(x), tuple(fx)) for x, fx in knots))
    new = rng.normal(scale=3.0, size=(50, 3))  # wider than the fitted range: clipped
    q = softmax(new)
    expected = np.stack(
        [
            IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(p[:, c], y == c).predict(q[:, c])
            for c in range(3)
        ],
        axis=1,
    )
    expected = np.maximum(expected, ISOTONIC_FLOOR)
    np.testing.assert_allclose(cal.probabilities(new), expected / expected.sum(axis=1, keepdims=True), atol=1e-12)


def test_bad_records_are_named(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    for record, message in [
        ({"threshold": 0.3}, "'method'"),
        ({"temperature": -1}, "positive"),
        ({"method": "platt"}, "'method' must be one of"),
        ({"method": "vector", "vector": {"scale": [1.0, 2.0], "bias": [0.0]}}, "vector.bias"),
        ({"method": "isotonic", "isotonic": [{"x": [0.5, 0.1], "y": [0.0, 1.0]}]}, "increasing"),
        ({"method": "isotonic"}, "'isotonic'"),
    ]:
        path.write_text(json.dumps(record))
        with pytest.raises(ValueError, match=message):
            read_calibration(path)
    path.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_calibration(path)
    with pytest.raises(FileNotFoundError, match="evaluate"):
        read_calibration(tmp_path / "nope.json")


def test_a_record_from_before_the_other_methods_is_temperature_scaling(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"temperature": 1.5, "temperature_applied": True, "threshold": 0.2}))
    assert read_calibration(path) == Calibrator("temperature", temperature=1.5)


def test_a_map_for_other_classes_is_refused() -> None:
    with pytest.raises(ValueError, match="for 2 classes, got 3"):
        Calibrator("vector", scale=(1.0, 1.0), bias=(0.0, 0.0)).probabilities(LOGITS)
