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


def test_the_experiment_is_marked_as_model_training_new_or_existing(tmp_path: Path) -> None:
    """MLflow 3's kind tag on the project's experiment: set when it is made, and on one made before without it
    (or that the UI marked GenAI)."""
    import mlflow

    from cxr.ops.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, ensure_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    new = ensure_experiment(mlflow, "fresh", tmp_path, uri)
    assert client.get_experiment(new).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND == "custom_model_development"

    old = client.create_experiment("older")  # as earlier versions of the project made it: no kind
    guessed = client.create_experiment("guessed", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    assert ensure_experiment(mlflow, "older", tmp_path, uri) == old
    assert ensure_experiment(mlflow, "guessed", tmp_path, uri) == guessed
    for exp_id in (old, guessed):
        assert client.get_experiment(exp_id).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    assert ensure_experiment(mlflow, "fresh", tmp_path, uri) == new  # marked already: nothing to do


def test_ui_link_opens_the_experiment_on_the_model_training_view(tmp_path: Path) -> None:
    """What `make ui` prints: the experiment of the project's store, with the query that selects MLflow 3.17's
    Model training view; the experiment list before there is a store."""
    import mlflow

    from cxr.ops.tracking import ensure_experiment, ui_link

    assert ui_link(tmp_path, "cxr", 5050) == "http://127.0.0.1:5050/#/experiments?workflowType=machine_learning"
    assert not (tmp_path / "mlflow.db").exists()  # looking made no store
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.MlflowClient(uri).create_experiment("other")
    exp_id = ensure_experiment(mlflow, "cxr", tmp_path, uri)
    assert (
        ui_link(tmp_path, "cxr", 5050) == f"http://127.0.0.1:5050/#/experiments/{exp_id}?workflowType=machine_learning"
    )
    assert ui_link(tmp_path, "absent", 5000).endswith(":5000/#/experiments?workflowType=machine_learning")


def test_make_ui_takes_a_port_and_the_readme_says_so() -> None:
    """`make ui PORT=5050` serves on 5050 (default 5000) and prints the model-training link."""
    import shutil
    import subprocess

    import pytest
    from conftest import REPO

    if shutil.which("make") is None:
        pytest.skip("no make")

    def dry_run(*args: str) -> str:
        cmd = ["make", "-n", "-o", "venv", "-o", ".venv/.installed", "ui", "PY=python", *args]
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout

    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5050" in dry_run("PORT=5050")
    default = dry_run()
    assert "--port 5000" in default and "ui_link(" in default and ", 5000)" in default
    assert "`make ui PORT=5050`" in (REPO / "README.md").read_text()
