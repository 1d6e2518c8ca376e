"""The drift check against a real registered champion: no champion, then the test split against its data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_project, tiny_params
from cxr.config import load_settings
from cxr.dvcops import dvc_env

pytestmark = pytest.mark.slow


def _run(root: Path, *args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=root, capture_output=True, text=True, env=dvc_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_drift_check_against_the_champion(tmp_path: Path, monkeypatch) -> None:
    import mlflow

    from cxr.drift import log_to_mlflow, read_report, run_drift_check
    from cxr.tracking import tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = make_project(tmp_path / "p", tiny_params(train={"epochs": 1}))
    settings = load_settings(root / "params.yaml")
    paths = settings.paths(root)
    uri = tracking_uri(root)
    _run(root, "cxr", "download")
    _run(root, "dvc", "repro", "split")

    first = run_drift_check(settings, paths, uri)
    assert first.status == "skipped" and "no champion" in first.reasons[0]

    _run(root, "dvc", "repro", "evaluate")
    _run(root, "cxr", "register")
    _run(root, "cxr", "promote", "1", "--reason", "test")
    report = run_drift_check(settings, paths, uri)
    assert report.status == "checked" and report.champion_version == "1"
    assert "test split" in report.current
    assert report.n_reference == report.n_current == 16  # tiny params: 16 valid, 16 test
    assert {"embedding_mmd", "class_mix", "intensity", "image_size", "image_mode"} <= set(report.tests)
    assert read_report(paths.drift) == report

    run_id = log_to_mlflow(report, settings, uri, root, "abc")
    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert run.data.tags["cxr.kind"] == "drift"
    assert "drift/embedding_mmd_p" in run.data.metrics
