"""Which post-hoc calibration the evaluate step applies: each method fitted on validation, judged on validation alone.

Every candidate (:data:`CANDIDATES`) is scored by the same rule: 5-fold cross-validation on the validation split,
each fold's images scored by the map fitted on the other folds. The method with the lowest cross-validated NLL is
applied when it beats no scaling; otherwise none is (a map fitted on a few hundred images can fit their noise).
The test split plays no part in the choice; its ECE for every candidate is reported beside it, never used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr.model.calibrate import Calibrator

log = logging.getLogger(__name__)

#: The methods compared, in the order a tie is broken (the simpler first).
CANDIDATES: tuple[str, ...] = ("temperature", "vector", "isotonic")
#: How evaluation decides which map is used (named in the report and the model card).
CRITERION = (
    "the method with the lowest 5-fold cross-validated NLL on the validation split, when that is lower than "
    "no scaling's"
)


def fit(method: str, logits: np.ndarray, labels: np.ndarray) -> Calibrator:
    """The ``method`` map fitted to validation ``logits`` and ``labels``."""
    from cxr.model.inference import softmax
    from cxr.stats.calibration import fit_isotonic, fit_temperature, fit_vector_scaling

    if method == "none":
        return Calibrator()
    if method == "temperature":
        return Calibrator("temperature", temperature=fit_temperature(logits, labels))
    if method == "vector":
        scale, bias = fit_vector_scaling(logits, labels)
        return Calibrator("vector", scale=tuple(scale.tolist()), bias=tuple(bias.tolist()))
    if method == "isotonic":
        knots = fit_isotonic(softmax(np.asarray(logits, dtype=np.float64)), labels)
        return Calibrator("isotonic", knots=tuple((tuple(x.tolist()), tuple(y.tolist())) for x, y in knots))
    raise ValueError(f"unknown calibration method {method!r}; expected none or one of {CANDIDATES}")


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of ``labels`` under ``probs`` (floored at 1e-12)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0))))


def cross_validated_nll(
    methods: tuple[str, ...], logits: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0
) -> dict[str, float]:
    """Per method (``none`` included), the NLL of each validation image under the map fitted without its fold."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    parts = [p for p in np.array_split(order, min(folds, len(y))) if len(p)]
    total = dict.fromkeys(("none", *methods), 0.0)
    for held in parts:
        rest = np.setdiff1d(order, held)
        for method in total:
            cal = fit(method, z[rest], y[rest]) if len(rest) else Calibrator()
            total[method] += nll(cal.probabilities(z[held]), y[held]) * len(held)
    return {method: value / len(y) for method, value in total.items()}


@dataclass(frozen=True)
class CalibrationChoice:
    """The maps fitted on validation, their cross-validated NLL, and the one applied."""

    fitted: dict[str, Calibrator]
    cv_nll: dict[str, float]
    folds: int

    @property
    def best(self) -> str:
        """The candidate with the lowest cross-validated NLL (the first on a tie)."""
        return min(self.fitted, key=lambda m: self.cv_nll[m])

    @property
    def method(self) -> str:
        """The method applied: the best candidate when it beats no scaling, else ``none``."""
        return self.best if self.cv_nll[self.best] < self.cv_nll["none"] else "none"

    @property
    def calibrator(self) -> Calibrator:
        """The map serving, the galleries and every test figure use."""
        return self.fitted.get(self.method, Calibrator())

    def record(self) -> dict[str, Any]:
        """The choice as ``calibration.json`` and the metrics report it (the map, then how it was chosen)."""
        temperature = self.fitted.get("temperature")
        return {
            **self.calibrator.record(),
            "temperature_fitted": temperature.temperature if temperature else None,
            "temperature_applied": self.method == "temperature",
            "criterion": CRITERION,
            "folds": self.folds,
            "valid_cv_nll": dict(self.cv_nll),
        }


def choose_calibration(
    logits: np.ndarray, labels: np.ndarray, seed: int, methods: tuple[str, ...] = CANDIDATES, folds: int = 5
) -> CalibrationChoice:
    """Fit every method on the validation logits and choose by :data:`CRITERION`."""
    cv = cross_validated_nll(methods, logits, labels, folds, seed)
    choice = CalibrationChoice({m: fit(m, logits, labels) for m in methods}, cv, min(folds, len(labels)))
    log.info(
        "calibration: %s applied (5-fold cross-validated NLL on validation: %s)",
        choice.method,
        ", ".join(f"{m} {v:.4f}" for m, v in cv.items()),
    )
    return choice


def held_out_figures(
    choice: CalibrationChoice,
    labels: np.ndarray,
    logits: np.ndarray,
    ece: Callable[[np.ndarray], dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Per method (``none`` included), what its map does on the test split: ``ece(probs)``'s figures. Reported
    beside the choice, never used for it."""
    out = {}
    for method, cal in {"none": Calibrator(), **choice.fitted}.items():
        probs = cal.probabilities(logits)
        out[method] = {**ece(probs), "nll": nll(probs, labels)}
    return out
