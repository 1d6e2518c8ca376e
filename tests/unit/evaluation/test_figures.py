"""The evaluate step's figures: confusion matrix, ROC, PR and reliability plots, and the ROC points file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scores_support import CLASSES, _synthetic

from cxr.evaluation import figures
from cxr.stats.classification import classification_metrics


@pytest.fixture(scope="module")
def fig_data() -> tuple[np.ndarray, np.ndarray]:
    """Small synthetic evaluation set."""
    return _synthetic(120, seed=11)


@pytest.mark.parametrize("kind", ["cm", "roc", "pr", "reliability"])
def test_figures_written(tmp_path, fig_data, kind) -> None:
    y, p = fig_data
    if kind == "cm":
        fig = figures.plot_confusion_matrix(
            classification_metrics(y, p, CLASSES, n_boot=0)["confusion_matrix"], CLASSES
        )
    elif kind == "roc":
        fig = figures.plot_roc(y, p, CLASSES)
    elif kind == "pr":
        fig = figures.plot_pr(y, p, CLASSES)
    else:
        fig = figures.plot_reliability(y, p)
    assert fig.axes
    path = tmp_path / f"{kind}.png"
    fig.savefig(path, dpi=80, bbox_inches="tight")
    assert path.stat().st_size > 1024


def test_roc_points(fig_data) -> None:
    y, p = fig_data
    rows = figures.roc_points(y, p, CLASSES)
    assert {r["class"] for r in rows} == set(CLASSES)
    assert set(rows[0]) == {"class", "fpr", "tpr", "threshold"}
    json.dumps(rows, allow_nan=False)
    covid = [r for r in rows if r["class"] == "COVID"]
    assert covid[0]["fpr"] == 0.0 and covid[-1]["tpr"] == 1.0
