"""MLflow plumbing: metrics flattened to MLflow's names, and where artifacts go for each kind of tracking URI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scores_support import CLASSES, _synthetic

from cxr.ops.tracking import flat_metrics
from cxr.stats.classification import classification_metrics


def test_flat_metrics() -> None:
    y, p = _synthetic(100)
    y = np.where(y == 3, 0, y)
    m = classification_metrics(y, p, CLASSES, n_boot=20)
    flat = flat_metrics(m, prefix="test")
    assert flat["test/accuracy"] == m["accuracy"]
    assert flat["test/COVID/sensitivity"] == m["per_class"]["COVID"]["sensitivity"]
    assert flat["test/binary/auc"] == m["binary"]["auc"]
    assert "test/Viral Pneumonia/auc" not in flat  # None dropped
    assert all(type(v) is float for v in flat.values())
    assert not any("per_class" in k for k in flat)
    assert flat_metrics({"a": {"b": 1}}) == {"a/b": 1.0}


def test_artifact_location_follows_the_tracking_uri(tmp_path: Path) -> None:
    from cxr.ops.tracking import artifact_location

    assert artifact_location(f"sqlite:///{tmp_path / 'store' / 'x.db'}", tmp_path / "p") == (
        (tmp_path / "store" / "mlartifacts").as_uri()
    )
    assert artifact_location("postgresql://u@db/mlflow", tmp_path / "p") == (tmp_path / "p" / "mlartifacts").as_uri()
    assert artifact_location("http://127.0.0.1:5000", tmp_path) is None  # the server's --artifacts-destination
