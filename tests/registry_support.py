"""What the registry tests share: a model name, gate settings, and a throw-away sqlite MLflow store to register in.

A test module imports the fixtures by their function names (``empty_db_fixture``, ``store_fixture``) and asks
for them by their fixture names (``empty_db``, ``store``). They are here and not in a tests/unit/registry
conftest.py: every conftest.py outside a package is the module ``conftest``, and the last one loaded would
stand for tests/conftest.py in every ``from conftest import ...``.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from cxr.core.sections import Registry

NAME = "cxr-test"


GOOD = {"test/accuracy": 0.9, "test/macro_auc": 0.95, "test/COVID/sensitivity": 0.9}


CFG = Registry(
    min_accuracy=0.5,
    min_macro_auc=0.7,
    min_sensitivity={"COVID": 0.5},
    margin=0.02,
    alpha=0.05,
    test="mcnemar",
    n_boot=500,
    auto_promote=True,
)


@pytest.fixture(scope="module", name="empty_db")
def empty_db_fixture(tmp_path_factory) -> Path:
    """An sqlite MLflow store with its schema migrated once (migrations take seconds; copies are instant)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    client = MlflowClient(f"sqlite:///{path}")
    client.search_experiments()
    client.search_registered_models()
    return path


@pytest.fixture(name="store")
def store_fixture(tmp_path: Path, empty_db: Path):
    """An MlflowClient on a fresh sqlite store, and a function that logs a run and registers a version."""
    import mlflow
    from mlflow import MlflowClient

    shutil.copy(empty_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.create_experiment("promote", artifact_location=(tmp_path / "artifacts").as_uri())

    def add(metrics=GOOD, preds=None, tags=None, model=None, name=NAME, manifest=None) -> str:
        tags = {"data_source": "kaggle", "data_version": "dv1", **(tags or {})}
        with mlflow.start_run(experiment_id=exp) as run:
            mlflow.log_metrics(metrics)
            if preds is not None:
                f = tmp_path / "predictions.csv"
                with f.open("w", newline="") as fh:
                    w = csv.DictWriter(fh, fieldnames=list(preds[0]))
                    w.writeheader()
                    w.writerows(preds)
                mlflow.log_artifact(str(f), "evaluation")
            if manifest is not None:
                mlflow.log_artifact(str(manifest), "pipeline")
            if model is not None:
                info = mlflow.pyfunc.log_model(name="model", python_model=model, pip_requirements=["mlflow"])
                source = info.model_uri
            else:
                source = f"{run.info.artifact_uri}/evaluation"
        try:
            client.create_registered_model(name)
        except Exception:  # noqa: BLE001 - it exists after the first version
            pass
        mv = client.create_model_version(name, source, run_id=run.info.run_id, tags=tags)
        return str(mv.version)

    yield client, add
    mlflow.set_tracking_uri(None)
