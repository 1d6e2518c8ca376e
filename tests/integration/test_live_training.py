"""MLflow while the pipeline runs: the training's metrics appear during `dvc repro`, the register step nests that
run under the pipeline run with its datasets and a clean `git_dirty`, DVC's record holds no run id, and a
tracking server that does not answer never fails a training."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import make_project, tiny_params
from integration.servers import closed_port, mlflow_server, stop_pid

from cxr.core.config import load_settings
from cxr.ops.dvc import dvc_env, run_dvc
from cxr.ops.lineage import data_version

pytestmark = pytest.mark.slow

EPOCHS = 2


@pytest.fixture(scope="module")
def prepared(module_tmp: Path) -> Path:
    """A committed project with its data made and its split recorded by DVC; each test works on a copy."""
    from cxr.data.download import download

    root = make_project(module_tmp / "prepared", tiny_params(train={"epochs": EPOCHS}))
    s = load_settings(root / "params.yaml")
    download(s.base, s.download, s.paths(root))
    run_dvc(["repro", "split"], root)
    return root


def _copy(prepared: Path, root: Path) -> Path:
    shutil.copytree(prepared, root, symlinks=True)
    return root


def _watch_training(client, proc: subprocess.Popen, timeout_s: float = 600) -> tuple[str, list[int]]:
    """Poll the store while ``proc`` runs; the live run's id and the epochs it showed while still RUNNING."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        exp = client.get_experiment_by_name("cxr")
        runs = client.search_runs([exp.experiment_id], "tags.`cxr.kind` = 'train'") if exp else []
        for run in runs:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch/val_loss")]
            if steps and run.info.status == "RUNNING":
                return run.info.run_id, steps
        time.sleep(0.3)
    return "", []


def test_training_is_visible_live_and_ends_under_the_pipeline_run(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    root = _copy(prepared, tmp_path / "project")
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = mlflow.MlflowClient(uri)
    client.search_experiments()  # the store's tables exist before two processes use it

    with (tmp_path / "repro.log").open("w") as log:
        repro = [sys.executable, "-m", "dvc", "repro", "evaluate"]
        proc = subprocess.Popen(repro, cwd=root, env=dvc_env(), stdout=log, stderr=subprocess.STDOUT)
        live_id, live_steps = _watch_training(client, proc)
        assert proc.wait(timeout=900) == 0, (tmp_path / "repro.log").read_text()[-3000:]
    assert live_id and live_steps and max(live_steps) < EPOCHS, "no epoch was visible while training ran"
    finished = client.get_run(live_id)
    assert finished.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(live_id, "epoch/val_loss"))
    assert steps == list(range(1, EPOCHS + 1))

    # DVC records no run id: the stage is up to date and nothing of the live run is in an output.
    lock = (root / "dvc.lock").read_text()
    assert "Running stage" not in run_dvc(["repro", "evaluate"], root)
    assert (root / "dvc.lock").read_text() == lock
    for f in [root / "dvc.lock", *(root / "reports").rglob("*"), *(root / "models").rglob("*")]:
        assert not f.is_file() or live_id.encode() not in f.read_bytes(), f

    out = subprocess.run([sys.executable, "-m", "cxr", "register"], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    [pipeline] = client.search_runs([finished.info.experiment_id], "tags.registration = 'new version'")
    assert client.get_run(live_id).data.tags["mlflow.parentRunId"] == pipeline.info.run_id
    assert pipeline.data.tags["cxr.train_run_id"] == live_id
    # The checkout was clean: what `cxr download` and `dvc repro` rewrote is not a code change.
    assert pipeline.data.tags["git_dirty"] == "false"
    inputs = {i.dataset.name: (i.dataset.digest, i.tags[0].value) for i in pipeline.inputs.dataset_inputs}
    assert inputs["data/raw"] == (data_version(root), "source")
    assert {k: v[1] for k, v in inputs.items() if k != "data/raw"} == {
        "train": "training",
        "valid": "validation",
        "test": "test",
    }
    experiment = client.get_experiment(finished.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_training_goes_on_when_the_tracking_server_is_down(prepared: Path, tmp_path: Path) -> None:
    root = _copy(prepared, tmp_path / "project")
    uri = f"http://127.0.0.1:{closed_port()}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.run([sys.executable, "-m", "cxr", "train"], cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no live MLflow run for this training" in proc.stderr and uri in proc.stderr
    assert (root / "models" / "best.pt").is_file() and "best epoch" in proc.stdout


def test_a_tracking_server_that_stops_mid_training_costs_a_warning(prepared: Path, tmp_path: Path) -> None:
    import mlflow

    root = _copy(prepared, tmp_path / "project")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["epochs"] = 4  # epochs left to run once the server is gone
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts", tmp_path / "server.log") as srv:
        client = mlflow.MlflowClient(srv.url)
        env = {**os.environ, "MLFLOW_TRACKING_URI": srv.url}
        with (tmp_path / "train.log").open("w") as log:
            train = [sys.executable, "-m", "cxr", "train"]
            proc = subprocess.Popen(train, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
            live_id, steps = _watch_training(client, proc)
            stop_pid(srv.pid, signal.SIGKILL)  # the server is gone; the training is not done
            assert proc.wait(timeout=600) == 0, (tmp_path / "train.log").read_text()[-3000:]
    out = (tmp_path / "train.log").read_text()
    assert live_id and steps and max(steps) < 4, out[-3000:]
    assert out.count("training goes on without live tracking") == 1 and "best epoch" in out
