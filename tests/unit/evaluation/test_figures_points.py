"""The curve points files `dvc plots` draws (cxr.evaluation.figures): rows per class, each curve in drawing order."""

from __future__ import annotations

import json

import numpy as np
from scores_support import CLASSES, _synthetic
from sklearn.metrics import average_precision_score

from cxr.evaluation import figures


def _by_class(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["class"], []).append(r)
    return out


def test_pr_points_give_each_class_its_curve_from_recall_zero_up() -> None:
    y, p = _synthetic(150, seed=3)
    rows = figures.pr_points(y, p, CLASSES)
    assert set(rows[0]) == {"class", "recall", "precision", "threshold"}
    json.dumps(rows, allow_nan=False)
    curves = _by_class(rows)
    assert list(curves) == CLASSES  # one curve per class, in the class order, each in one run of rows
    for c, name in enumerate(CLASSES):
        curve = curves[name]
        recall = [r["recall"] for r in curve]
        thresholds = [r["threshold"] for r in curve]
        # Drawn in the order of the rows: nothing flagged first (recall 0, precision 1), everything flagged last.
        assert (recall[0], curve[0]["precision"], thresholds[0]) == (0.0, 1.0, 1.0)
        assert recall[-1] == 1.0 and curve[-1]["precision"] == np.mean(y == c)
        assert recall == sorted(recall) and thresholds[1:] == sorted(thresholds[1:], reverse=True)
        # The step area under the rows is the average precision sklearn reports.
        ap = sum((b["recall"] - a["recall"]) * b["precision"] for a, b in zip(curve, curve[1:], strict=False))
        assert np.isclose(ap, average_precision_score(y == c, p[:, c]))


def test_a_class_without_positives_has_no_pr_curve(caplog) -> None:
    y, p = _synthetic(60, seed=5)
    y = np.where(y == 3, 0, y)  # no Viral Pneumonia left
    rows = figures.pr_points(y, p, CLASSES)
    assert set(_by_class(rows)) == set(CLASSES[:3])
    assert "pr_points: class 'Viral Pneumonia' skipped (no positives)" in caplog.text
