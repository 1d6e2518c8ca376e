"""Registration: the pyfunc logged with lineage and a model card, an untouched registry on failure, one version
for the same inputs, the artifacts beside the store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, tiny_params
from serving_support import CLASSES, make_checkpoint

from cxr.core.config import parse_settings


def fake_project(root: Path) -> tuple:
    """The files the register step reads, without running the pipeline."""
    settings = parse_settings(
        tiny_params(
            base={"classes": CLASSES}, evaluate={"positive_class": "COVID"}, download={"max_pixels": 12_000_000}
        )
    )
    paths = settings.paths(root)
    (root / "params.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    (root / "dvc.lock").write_text("schema: '2.0'\n")
    (root / "data.dvc").write_text(yaml.safe_dump({"outs": [{"path": "data/raw", "md5": "abc123.dir"}]}))
    make_checkpoint(paths.best_checkpoint)
    paths.eval_reports.mkdir(parents=True)
    (paths.eval_reports / "calibration.json").write_text(json.dumps({"temperature": 1.5}))
    metrics = {
        "n": 16,
        "classes": CLASSES,
        "accuracy": 0.75,
        "accuracy_ci_low": 0.5,
        "accuracy_ci_high": 0.9,
        "macro_auc": 0.8,
        "macro_auc_ci_low": 0.6,
        "macro_auc_ci_high": 0.95,
        "per_class": {
            c: {"support": 5, "sensitivity": 0.6, "sensitivity_ci_low": 0.2, "sensitivity_ci_high": 1.0}
            for c in CLASSES
        },
        "binary": {
            "positive": "COVID",
            "threshold": 0.4,
            "sensitivity": 0.8,
            "sensitivity_ci_low": 0.4,
            "sensitivity_ci_high": 1.0,
        },
        "calibration": {"temperature": 1.5, "ece": 0.05, "ece_uncalibrated": 0.2, "brier": 0.3},
        "bootstrap": {"ci": 0.95},
    }
    paths.metrics_full.write_text(json.dumps(metrics))
    paths.gradcam_reports.mkdir(parents=True)
    (paths.gradcam_reports / "metrics.json").write_text(json.dumps({"lung_energy": 0.61, "lung_area_fraction": 0.3}))
    return settings, paths


def test_register_logs_the_pyfunc_with_lineage_and_a_model_card(tmp_path: Path, monkeypatch) -> None:
    import mlflow

    from cxr.registry import register as reg

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    settings, paths = fake_project(tmp_path / "p")
    client = mlflow.MlflowClient(uri)

    # A failure half-way (after the run started, before the model is in place) leaves the registry untouched.
    def boom(*args, **kwargs):
        raise RuntimeError("artifact store went away")

    monkeypatch.setattr("cxr.serving.pyfunc.log_pyfunc", boom)
    with pytest.raises(RuntimeError, match="went away"):
        reg.register(settings, paths)
    assert client.search_registered_models() == []
    failed = client.search_runs([client.get_experiment_by_name(settings.base.experiment).experiment_id])
    assert [r.info.status for r in failed] == ["FAILED"]
    monkeypatch.undo()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)

    # A failing version creation removes the registered model it had to create.
    def no_version(*args, **kwargs):
        raise RuntimeError("registry refused the version")

    monkeypatch.setattr(mlflow.MlflowClient, "create_model_version", no_version)
    with pytest.raises(RuntimeError, match="refused"):
        reg.register(settings, paths)
    assert client.search_registered_models() == []
    monkeypatch.undo()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)

    result = reg.register(settings, paths)
    version = client.get_model_version(result.model_name, result.version)
    tags = version.tags
    assert tags["data_version"] == "abc123.dir"
    assert tags["mlflow_run_id"] == result.run_id == version.run_id
    assert tags["params_hash"] == settings.fingerprint() and len(tags["dvc_lock_sha256"]) == 64
    assert "git_commit" in tags
    assert float(tags["test.accuracy"]) == 0.75 and float(tags["test.accuracy_ci_low"]) == 0.5
    assert float(tags["test.macro_auc_ci_high"]) == 0.95
    assert float(tags["test.COVID.sensitivity"]) == 0.6 and float(tags["test.COVID.at_threshold.sensitivity"]) == 0.8
    card = version.description
    for needle in (
        "Intended use",
        "abc123.dir",
        "Normal, COVID, Viral Pneumonia",
        "0.7500 [0.5000, 0.9000]",
        "T = 1.5000",
        "0.6100",
        "Source-archive shortcut",
        "Near duplicates",
        "No patient identifiers",
    ):
        assert needle in card, needle
    local = mlflow.artifacts.download_artifacts(
        run_id=result.run_id, artifact_path="model_card.md", dst_path=str(tmp_path / "dl"), tracking_uri=uri
    )
    assert Path(local).read_text() == card
    # The report logged to the run names the run and the version, which the report stage cannot know.
    page = mlflow.artifacts.download_artifacts(
        run_id=result.run_id, artifact_path="pipeline/report.html", dst_path=str(tmp_path / "dl"), tracking_uri=uri
    )
    page = Path(page).read_text()
    assert f"<code>{result.run_id}</code>" in page and f"{result.model_name} version {result.version}" in page
    assert client.get_run(result.run_id).data.metrics["data/skipped_files"] == 0
    model = mlflow.pyfunc.load_model(f"models:/{result.model_name}/{result.version}")
    assert model.unwrap_python_model().temperature == 1.5
    assert model.unwrap_python_model().max_pixels == settings.download.max_pixels == 12_000_000  # ingestion's limit
    out = model.predict(pd.DataFrame({"image": [np.full((30, 30), 128, np.uint8)]}))
    assert list(out.columns) == ["p_Normal", "p_COVID", "p_Viral Pneumonia", "label"]


def test_register_twice_with_the_same_inputs_registers_once(tmp_path: Path, monkeypatch) -> None:
    import mlflow

    from cxr.core.config import parse_settings
    from cxr.registry import register as reg

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    settings, paths = fake_project(tmp_path / "p")
    shutil.copytree(REPO / "cxr", paths.root / "cxr", ignore=shutil.ignore_patterns("__pycache__"))
    client = mlflow.MlflowClient(uri)

    first = reg.register(settings, paths)
    again = reg.register(settings, paths)
    assert first.new and not again.new
    assert again.version == first.version and again.run_id != first.run_id
    assert len(client.search_model_versions(f"name='{settings.base.model_name}'")) == 1
    unchanged = client.get_run(again.run_id).data.tags
    assert unchanged["registration"] == "unchanged" and unchanged["same_as_version"] == first.version

    # A gate rule or the log level is not a model input; the data, a train param or the code is.
    gate_only = parse_settings({**settings.model_dump(mode="json"), "registry": {"min_accuracy": 0.1}})
    assert not reg.register(gate_only, paths).new
    forced = reg.register(settings, paths, force=True)
    assert forced.new and forced.version != first.version
    changed = parse_settings(
        {**settings.model_dump(mode="json"), "train": {**settings.train.model_dump(mode="json"), "lr": 0.01}}
    )
    assert reg.register(changed, paths).new
    (paths.root / "cxr" / "model" / "networks.py").write_text(
        (paths.root / "cxr" / "model" / "networks.py").read_text() + "\n# edited\n"
    )
    assert reg.register(settings, paths).new
    card = paths.root / "cxr" / "reporting" / "templates" / "model_card.md.j2"
    card.write_text(card.read_text() + "\nEdited.\n")
    assert reg.register(settings, paths).new  # a template shapes the registered card: it is code too
    data = yaml.safe_load((paths.root / "data.dvc").read_text())
    data["outs"][0]["md5"] = "def456.dir"
    (paths.root / "data.dvc").write_text(yaml.safe_dump(data))
    assert reg.register(settings, paths).new


def test_artifacts_go_beside_the_store_not_into_the_working_folder(tmp_path: Path, monkeypatch) -> None:
    """With no MLFLOW_TRACKING_URI: mlflow.db and mlartifacts/ in the project, as the README says; nothing in cwd."""
    import mlflow

    from cxr.registry import register as reg

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings, paths = fake_project(tmp_path / "p")
    try:
        result = reg.register(settings, paths)
    finally:
        mlflow.set_tracking_uri(None)
    project = (tmp_path / "p").resolve()
    assert result.tracking_uri == f"sqlite:///{project / 'mlflow.db'}"
    assert list((project / "mlartifacts").rglob("MLmodel")), "the model is not under mlartifacts/"
    assert not (project / "mlruns").exists() and list(elsewhere.iterdir()) == []
    readme = (REPO / "README.md").read_text()
    assert "`mlflow.db`, `mlartifacts/`" in readme


def test_the_pipeline_run_shows_its_datasets_and_the_live_training_run_nested(tmp_path: Path, monkeypatch) -> None:
    """The run page's Datasets (the data version as digest) and one pipeline run holding the training's live run;
    on an unchanged rerun, a retrained checkpoint's run goes under the short run."""
    import mlflow

    from cxr.ops.trainrun import start_live_run
    from cxr.registry import register as reg

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    settings, paths = fake_project(tmp_path / "p")
    client = mlflow.MlflowClient(uri)

    def train_live() -> str:
        live = start_live_run(uri, paths.root, settings.base.experiment, {}, {})
        live.log_epoch({"epoch": 1, "val_loss": 0.5})
        live.record_result(paths.history, paths.best_checkpoint, {"best_epoch": 1})
        live.end("FINISHED")
        return live.run_id

    trained = train_live()
    result = reg.register(settings, paths)
    assert result.train_run_id == trained
    assert client.get_run(trained).data.tags["mlflow.parentRunId"] == result.run_id
    run = client.get_run(result.run_id)
    assert run.data.tags["cxr.train_run_id"] == trained
    inputs = {(i.dataset.name, i.dataset.digest): [t.value for t in i.tags] for i in run.inputs.dataset_inputs}
    assert inputs == {("data/raw", "abc123.dir"): ["source"]}  # no split manifest in this project
    assert "mlflow.parentRunId" not in run.data.tags  # the pipeline run is the top one
    kind = client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"]
    assert kind == "custom_model_development"

    retrained = train_live()  # e.g. `dvc repro --force`: the same checkpoint again
    again = reg.register(settings, paths)
    assert not again.new and again.train_run_id == retrained
    assert client.get_run(retrained).data.tags["mlflow.parentRunId"] == again.run_id
    assert client.get_run(trained).data.tags["mlflow.parentRunId"] == result.run_id
    assert [i.dataset.digest for i in client.get_run(again.run_id).inputs.dataset_inputs] == ["abc123.dir"]


def test_git_dirty_leaves_out_what_the_pipeline_writes(tmp_path: Path, monkeypatch) -> None:
    """A clean checkout whose pipeline has just rewritten dvc.lock, data.dvc and the metrics registers as clean."""
    import subprocess

    from cxr.registry import register as reg

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    settings, paths = fake_project(tmp_path / "p")
    (paths.root / "cxr").mkdir()
    (paths.root / "cxr" / "code.py").write_text("x = 1\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run([*git, *args], cwd=paths.root, check=True)
    (paths.root / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (paths.root / "data.dvc").write_text(yaml.safe_dump({"outs": [{"path": "data/raw", "md5": "fed321.dir"}]}))
    paths.metrics_full.write_text(paths.metrics_full.read_text().replace("0.75", "0.76"))
    first = reg._read_inputs(settings, paths).lineage
    assert first["git_dirty"] == "false" and len(first["git_commit"]) == 40
    (paths.root / "cxr" / "code.py").write_text("x = 2\n")
    assert reg._read_inputs(settings, paths).lineage["git_dirty"] == "true"
