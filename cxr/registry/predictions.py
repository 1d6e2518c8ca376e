"""A registered run's test predictions as outcomes per image content hash, and re-scoring a registered model."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from cxr.registry.aliases import (
    registry_uri,
)


def read_manifest_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a split manifest (path, label, split, sha256 ...)."""
    from cxr.data.manifest import read_manifest

    return list(read_manifest(Path(path)).rows)


def download_artifact(client, run_id: str, artifact: str, dst: Path) -> Path | None:
    """A run's artifact downloaded under ``dst``, or None when the run has no such artifact."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return Path(
            mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=artifact, dst_path=str(dst), tracking_uri=client.tracking_uri
            )
        )
    except (MlflowException, OSError):
        return None


def hashed_outcomes(
    predictions: list[dict[str, str]], by_path: Mapping[str, Mapping[str, str]] | None, where: str
) -> dict[str, tuple[str, str]] | None:
    """sha256 -> (actual, predicted) for each predicted image, or None when the hashes cannot be recovered.

    A ``sha256`` column in the predictions wins; otherwise the path is looked up in a manifest (test rows).
    Exact copies share a hash and were scored alike, so the first row of each hash stands for it.
    """
    out: dict[str, tuple[str, str]] = {}
    for row in predictions:
        for col in ("actual", "predicted"):
            if col not in row:
                raise ValueError(f"{where}: predictions lack the {col!r} column")
        digest = row.get("sha256") or None
        if digest is None:
            if by_path is None or row.get("path") not in by_path:
                return None
            digest = by_path[row["path"]]["sha256"]
        out.setdefault(digest, (row["actual"], row["predicted"]))
    return out


def manifest_test_rows(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    """The test rows of a manifest, by path."""
    return {r["path"]: r for r in rows if r.get("split") == "test"}


def rescore(model_uri: str, client, images: Sequence[str | bytes]) -> list[str]:
    """Predicted labels of a registered pyfunc model (cxr.serving.pyfunc contract: ``image`` in, ``label`` out)."""
    import mlflow
    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="cxr-rescore-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=model_uri, dst_path=tmp, tracking_uri=client.tracking_uri, registry_uri=registry_uri(client)
        )
        model = mlflow.pyfunc.load_model(local)
        out = model.predict(pd.DataFrame({"image": [p if isinstance(p, bytes) else str(p) for p in images]}))
    if "label" not in getattr(out, "columns", ()):
        raise ValueError(f"{model_uri}: prediction has no 'label' column")
    labels = [str(x) for x in out["label"]]
    if len(labels) != len(images):
        raise ValueError(f"{model_uri}: {len(labels)} predictions for {len(images)} images")
    return labels
