"""The drift check against a registered champion: none, then no new data, then new images against its held-out ones.

The champion is made by the project's own steps, called in-process (download, split, train, evaluate,
register, promote): how those steps run as commands is tested elsewhere; here they only set up the check.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import make_project, tiny_params

from cxr.core.config import load_settings

pytestmark = pytest.mark.slow


def test_drift_check_against_the_champion(tmp_path: Path, monkeypatch) -> None:
    import mlflow

    from cxr.data.download import download
    from cxr.data.split import split
    from cxr.evaluation.evaluate import evaluate
    from cxr.monitoring.drift import drift, log_to_mlflow
    from cxr.monitoring.report import read_report
    from cxr.ops.tracking import tracking_uri
    from cxr.registry.promote import promote
    from cxr.registry.register import register
    from cxr.training.loop import train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = make_project(tmp_path / "p", tiny_params(train={"epochs": 1}))
    settings = load_settings(root / "params.yaml")
    paths = settings.paths(root)
    uri = tracking_uri(root)
    download(settings.base, settings.download, paths)
    split(settings.base, settings.split, paths)

    first = drift(settings, paths, uri)
    assert first.status == "skipped" and "no champion" in first.reasons[0]

    train(settings.train, settings.base, paths, resume=False)
    evaluate(settings.base, settings.evaluate, paths, settings.train.device)
    registered = register(settings, paths, root / "params.yaml")
    assert registered.version == "1"
    promote(mlflow.MlflowClient(uri), settings.base.model_name, registered.version, "test", "test")
    # The same data as the champion's: nothing new, so nothing to test (its split's halves are one draw).
    same = drift(settings, paths, uri)
    assert same.status == "no new data" and not same.flagged and same.champion_version == "1"
    assert same.mlflow_run_id is None

    # Four more images per class arrive (the generator's images 20-23; 0-19 are unchanged).
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["download"]["synthetic"]["per_class"] = 24
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    settings = load_settings(root / "params.yaml")
    download(settings.base, settings.download, paths)
    split(settings.base, settings.split, paths)
    report = drift(settings, paths, uri)
    assert report.status == "checked" and report.champion_version == "1"
    # The champion's held-out images (16 valid and 16 test of its 80) against the 4 x 4 new ones.
    assert report.n_reference == 32 and report.n_current == 16
    assert {"embedding_mmd", "class_mix", "intensity", "image_size", "image_mode"} <= set(report.tests)
    assert report.alpha_per_test == pytest.approx(settings.drift.alpha / len(report.tests))
    assert read_report(paths.drift) == report and report.mlflow_run_id

    run_id = log_to_mlflow(report, settings, uri, root, "abc")
    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert run.data.tags["cxr.kind"] == "drift"
    assert "drift/embedding_mmd_p" in run.data.metrics
