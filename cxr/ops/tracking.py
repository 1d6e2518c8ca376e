"""MLflow plumbing: the tracking URI and its health, the experiment and its artifact store, flat metric keys,
and the names (aliases, artifact paths) that registration, the gate and the drift check share. Imports nothing
heavy."""

from __future__ import annotations

import math
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server cannot be reached."""


def tracking_uri(root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the sqlite store in the project."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"


def check_tracking(uri: str, timeout_s: float = 5.0) -> None:
    """Fail within seconds when a remote tracking server does not answer (before any training)."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as resp:
            if resp.status >= 400:
                raise TrackingUnavailable(f"MLflow tracking server {uri} answered {resp.status} on /health")
    except (urllib.error.URLError, OSError) as err:
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} is unreachable ({getattr(err, 'reason', err)}); "
            "start it or unset MLFLOW_TRACKING_URI to use the local sqlite store"
        ) from None


def artifact_location(uri: str, root: Path) -> str | None:
    """Where a new experiment keeps its artifacts: beside a sqlite store, in ``mlartifacts/``; a server decides its own.

    Decided from the tracking URI, not from the environment: ``mlflow.set_tracking_uri`` exports
    ``MLFLOW_TRACKING_URI`` itself. Left to MLflow, a database store puts artifacts in ``./mlruns`` of whatever
    folder the command runs in.
    """
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    scheme = urlparse(uri).scheme
    if scheme in ("http", "https", "databricks", "uc", "file", ""):
        return None  # a server's --artifacts-destination, or a file store that holds its own artifacts
    if scheme == "sqlite":
        database = Path(url2pathname(uri.split(":///", 1)[1])) if ":///" in uri else None
        if database is not None and database.name not in ("", ":memory:"):
            return (database.parent / "mlartifacts").resolve().as_uri()
    return (root / "mlartifacts").resolve().as_uri()


#: The experiment tag MLflow 3's UI reads for the kind of work an experiment holds, and the kind for trained
#: models (the UI's enum in mlflow/server/js: ``genai_development`` opens on traces, this one on training runs).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"


def ensure_experiment(mlflow, name: str, root: Path, uri: str) -> str:
    """The id of experiment ``name``, created with its artifact location when new, and marked as model training.

    An existing experiment is marked too (older ones have no kind, and the UI may have guessed GenAI): the
    project's experiment holds training runs only.
    """
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        return mlflow.create_experiment(
            name, artifact_location=artifact_location(uri, root), tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND}
        )
    if exp.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING_KIND:
        mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    return exp.experiment_id


#: MLflow 3.17's UI opens every experiment on the view its UI-wide switch holds (a new browser: GenAI, with traces
#: and token usage), whatever the experiment's kind; this query in the link selects the model-training view.
UI_TRAINING_VIEW = "workflowType=machine_learning"


def ui_link(root: Path, experiment: str, port: int, host: str = "127.0.0.1") -> str:
    """The link that opens ``experiment`` of the project's sqlite store (``mlflow.db``) in the MLflow UI on its
    model-training view: its runs, their metrics and datasets; the experiment list before the store has it."""
    import sqlite3
    from contextlib import closing

    base = f"http://{host}:{port}/#/experiments"
    db = root / "mlflow.db"
    row = None
    if db.is_file():  # read-only, without MLflow: the UI's server owns the store
        try:
            with closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as con:
                row = con.execute("SELECT experiment_id FROM experiments WHERE name = ?", (experiment,)).fetchone()
        except sqlite3.Error:
            row = None
    return f"{base}/{row[0]}?{UI_TRAINING_VIEW}" if row else f"{base}?{UI_TRAINING_VIEW}"


def sanitize_key(key: str) -> str:
    """Keep characters MLflow accepts in metric names; replace the rest with '_'."""
    return "".join(ch if (ch.isalnum() or ch in "_-. /") else "_" for ch in str(key))


def flat_metrics(m: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """MLflow metric keys ('test/accuracy', 'test/COVID/sensitivity') with float values (None dropped)."""
    out: dict[str, float] = {}

    def walk(obj: Mapping[str, Any], path: list[str]) -> None:
        """Recurse into nested dicts, skipping the 'per_class' level."""
        for key, value in obj.items():
            sub = path if key == "per_class" else [*path, sanitize_key(key)]
            if isinstance(value, Mapping):
                walk(value, sub)
            elif isinstance(value, bool) or value is None:
                continue
            elif isinstance(value, (int, float, np.integer, np.floating)):
                v = float(value)
                if math.isfinite(v):
                    out["/".join(sub)] = v

    base = [s for s in prefix.strip("/").split("/") if s] if prefix else []
    walk(m, base)
    return out


PREDICTIONS_ARTIFACT = "evaluation/predictions.csv"


#: Where a run's split manifest lives when the register step logs it (lets hashes be recovered later).
MANIFEST_ARTIFACT = "pipeline/manifest.csv"


CHAMPION = "champion"


CHALLENGER = "challenger"


PREVIOUS = "previous_champion"
