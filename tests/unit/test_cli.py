"""The ``cxr`` command as a user runs it: a fresh process, without the Makefile's environment."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, tiny_params


def cxr(
    args: list[str], cwd: Path, env: dict[str, str | None] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """``python -m cxr ARGS`` in ``cwd`` with this checkout's code; ``env`` laid over os.environ (None removes)."""
    full = {**os.environ, **(env or {})}
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full.get("PYTHONPATH")]))
    full = {k: v for k, v in full.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-m", "cxr", *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout
    )


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


FAKE_FLOW = '''
"""Stands in for flows/pipeline.py: imports Prefect at import time, as the real flow module does."""
from prefect.settings import get_current_settings


def pipeline(params, root):
    return get_current_settings().server.ephemeral.startup_timeout_seconds
'''


def test_run_gives_prefect_a_patient_startup_without_the_makefile(tmp_path: Path) -> None:
    """`python -m cxr run` sets Prefect's ephemeral start-up timeout before Prefect reads its settings."""
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "__init__.py").write_text("")
    (tmp_path / "flows" / "pipeline.py").write_text(FAKE_FLOW)  # found first: the current folder leads sys.path
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / ".prefect")
    proc = cxr(["run"], tmp_path, env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "pipeline done: 180"


# ---- cxr predict off the happy path ----


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one line a failed command printed: exit 1, no traceback, a single ``error:`` line on stderr."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.strip().endswith(errors[0]), proc.stderr[-3000:]
    return errors[0]


def predict_project(root: Path) -> Path:
    """A folder with params.yaml and one readable image: enough for ``cxr predict``."""
    import cv2
    import numpy as np

    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    cv2.imwrite(str(root / "new.png"), np.full((32, 32), 100, np.uint8))
    return root


@pytest.mark.slow  # three fresh processes, each importing MLflow and torch
def test_predict_without_champion_or_registry_fails_in_one_line(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    root = predict_project(tmp_path / "p")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_registered_model("cxr-classifier")  # registered, but nothing promoted

    line = error_line(cxr(["predict", "new.png"], root, {"MLFLOW_TRACKING_URI": uri}))
    assert "models:/cxr-classifier@champion" in line and "no 'champion' alias" in line and "cxr gate" in line
    line = error_line(
        cxr(["predict", "new.png", "--model", "models:/elsewhere@champion"], root, {"MLFLOW_TRACKING_URI": uri})
    )
    assert "no registered model 'elsewhere'" in line

    # A tracking server that does not answer. MLflow's own client would retry it for minutes; no retries here
    # keeps a regression quick to show (as a traceback), and does not help the check under test.
    dead = f"http://127.0.0.1:{free_port()}"
    line = error_line(
        cxr(["predict", "new.png"], root, {"MLFLOW_TRACKING_URI": dead, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    )
    assert dead in line and "unreachable" in line
    assert not (root / "predictions.csv").exists()


@pytest.mark.slow  # a fresh process importing MLflow and torch
def test_predict_with_a_model_trained_on_synthetic_images_ends_on_a_warning(tmp_path: Path) -> None:
    import mlflow
    from serving_support import make_checkpoint

    from cxr.serving.pyfunc import log_pyfunc

    root = predict_project(tmp_path / "p")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=exp):
        info = log_pyfunc(make_checkpoint(tmp_path / "best.pt"), None, data_source="synthetic")
    client = mlflow.MlflowClient(uri)
    client.create_registered_model("cxr-classifier")
    mv = client.create_model_version("cxr-classifier", info.model_uri)
    client.set_registered_model_alias("cxr-classifier", "champion", mv.version)

    proc = cxr(["predict", "new.png"], root, {"MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "predictions in predictions.csv: 1 images classified"
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("warning: this model was trained on synthetic images, not radiographs"), proc.stderr


def test_predict_refuses_a_wrong_output_suffix_before_loading_anything(tmp_path: Path) -> None:
    """The refusal comes before MLflow or torch is even imported, let alone the model loaded."""
    root = predict_project(tmp_path / "p")
    code = (
        "import sys\nfrom cxr.cli import app\ntry:\n    app(['predict', 'new.png', '-o', 'out.xlsx'])\n"
        "except SystemExit as e:\n    print(e.code, sorted({'mlflow', 'torch'} & set(sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout.strip() == "1 []", (proc.stdout, proc.stderr[-2000:])
    assert proc.stderr.strip() == "error: out.xlsx: the output must end in .csv or .json"


def _cli_project(tmp_path: Path) -> Path:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    return tmp_path


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert lines[-1].startswith("error: "), proc.stderr
    return lines[-1]


def test_a_truncated_or_foreign_checkpoint_is_one_error_line_naming_it(tmp_path: Path) -> None:
    import torch

    root = _cli_project(tmp_path)
    best = root / "models" / "best.pt"
    best.parent.mkdir()
    torch.save({"model": {"w": torch.zeros(2)}, "arch": "resnet18", "classes": ["a", "b"], "image_size": 32}, best)
    foreign = _one_error_line(cxr(["evaluate"], root))
    assert str(best) in foreign and "do not fit a resnet18 with 2 classes" in foreign and len(foreign) < 500
    best.write_bytes(best.read_bytes()[:200])  # truncated
    truncated = _one_error_line(cxr(["evaluate"], root))
    assert str(best) in truncated and "not a checkpoint that can be read" in truncated


def test_an_output_folder_that_cannot_be_written_stops_training_before_any_work(tmp_path: Path) -> None:
    """models/ is a file here (a read-only folder behaves alike for a user who is not root)."""
    root = _cli_project(tmp_path)
    (root / "models").write_text("not a folder")
    line = _one_error_line(cxr(["train"], root))
    assert str(root / "models") in line and "cannot write there" in line
    assert not (root / "data" / "cache").exists()  # nothing was decoded


def test_a_second_training_into_the_same_models_folder_stops_naming_the_first(tmp_path: Path) -> None:
    """A rerun while an orphaned `cxr train` (its `dvc repro` killed) still writes into models/."""
    from filelock import FileLock

    root = _cli_project(tmp_path)
    (root / "models").mkdir()
    (root / "models" / ".train.pid").write_text("4242\n")
    with FileLock(root / "models" / ".train.lock"):
        line = _one_error_line(cxr(["train"], root))
    assert "another training (process 4242) is writing its checkpoints here" in line
