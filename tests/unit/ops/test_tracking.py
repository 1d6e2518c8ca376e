"""MLflow plumbing: where artifacts go for each kind of tracking URI."""

from __future__ import annotations

from pathlib import Path


def test_artifact_location_follows_the_tracking_uri(tmp_path: Path) -> None:
    from cxr.ops.tracking import artifact_location

    assert artifact_location(f"sqlite:///{tmp_path / 'store' / 'x.db'}", tmp_path / "p") == (
        (tmp_path / "store" / "mlartifacts").as_uri()
    )
    assert artifact_location("postgresql://u@db/mlflow", tmp_path / "p") == (tmp_path / "p" / "mlartifacts").as_uri()
    assert artifact_location("http://127.0.0.1:5000", tmp_path) is None  # the server's --artifacts-destination
