"""End to end: the Prefect flow, `dvc repro` and the CLI run one implementation and agree."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import deep_update, make_project, tiny_params

from cxr.core.config import parse_settings
from cxr.ops.dvc import dvc_env

pytestmark = pytest.mark.slow

METRIC_KEYS = ("accuracy", "macro_auc", "macro_f1", "macro_precision", "macro_sensitivity", "macro_specificity")
PER_CLASS_KEYS = ("precision", "sensitivity", "specificity", "f1", "auc")
# Smaller than tiny: these tests are about which stages run and what they leave, not about accuracy. Most of
# a stage's time is its process importing torch; the rest shrinks with the images, the bootstrap and the CAMs.
SMALL = {
    "download": {"synthetic": {"size": 64}},
    "train": {"image_size": 32},
    "evaluate": {"n_boot": 20},
    "gradcam": {"per_class": 1},
    "drift": {"permutations": 500, "max_images": 40},
}


def small_params(**changes) -> dict:
    """tiny_params, shrunk further, with ``changes`` merged in."""
    return deep_update(tiny_params(**SMALL), changes)


def download_in_process(root: Path) -> None:
    """`cxr download`'s function, in this process: set-up for tests about what comes after."""
    from cxr.data.download import download

    s = parse_settings(yaml.safe_load((root / "params.yaml").read_text()))
    download(s.base, s.download, s.paths(root))


def dvc(root: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True, env=dvc_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def cxr(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxr", *args], cwd=root, capture_output=True, text=True)


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def test_flow_then_dvc_agree(tmp_path: Path, prefect_harness, monkeypatch) -> None:
    import mlflow

    from flows.pipeline import pipeline

    root = make_project(tmp_path / "p", small_params())
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = pipeline(params="params.yaml", root=str(root))
    assert all(result["stages_ran"].values())

    # dvc.lock is true: nothing to do, and `dvc repro` reruns nothing.
    assert "up to date" in dvc(root, "status")
    out = dvc(root, "repro")
    assert "Running stage" not in out

    metrics = json.loads((root / "reports" / "metrics_full.json").read_text())
    for key in METRIC_KEYS:
        assert key in metrics and f"{key}_ci_low" in metrics
    for cls in ("COVID", "Normal", "Lung_Opacity", "Viral Pneumonia"):
        assert set(PER_CLASS_KEYS) <= set(metrics["per_class"][cls])
    assert "binary" in metrics and "temperature" in metrics["calibration"]
    shown = dvc(root, "metrics", "show", "--json")
    [workspace] = json.loads(shown).values()  # keyed by revision: "" is the work tree
    assert "acc" in workspace["data"]["reports/metrics/test.json"]["data"]
    # The headline table is readable as typed, without arguments: it fits a 160-column screen and has a row per
    # file (the test split, each class, COVID against the rest, Grad-CAM, training) with every headline figure.
    table = dvc(root, "metrics", "show")
    assert max(map(len, table.splitlines())) <= 160, table
    header = table.splitlines()[0].split()
    assert {"acc", "auc", "f1", "ece", "sens", "spec", "lungs", "point", "val_acc", "val_f1"} <= set(header)
    for row in ("test.json", "Viral Pneumonia.json", "COVID_vs_rest.json", "cam_metrics.json", "train/metrics.json"):
        assert row in table, table
    diff = dvc(root, "metrics", "diff", "--all")  # against the project's first commit, which has none
    assert max(map(len, diff.splitlines())) <= 160, diff
    for fig in ("confusion_matrix.png", "roc.png", "precision_recall.png", "reliability.png"):
        assert (root / "reports" / "eval" / fig).stat().st_size > 1000
    overlays = list((root / "reports" / "gradcam").glob("*/*.png"))
    assert {p.parent.name for p in overlays} == {"COVID", "Normal", "Lung_Opacity", "Viral_Pneumonia"}

    # One MLflow run with lineage, per-epoch metrics and the registered model version.
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    run = client.get_run(result["registered"]["run_id"])
    data_md5 = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]
    assert run.data.tags["data_version"] == data_md5
    assert len(run.data.tags["git_commit"]) == 40
    assert "test/accuracy" in run.data.metrics
    history = client.get_metric_history(run.info.run_id, "epoch/val_accuracy")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"evaluation", "gradcam", "pipeline"} <= artifacts
    version = client.get_model_version("cxr-classifier", result["registered"]["version"])
    assert version.run_id == run.info.run_id
    # The stores are where the README says: mlflow.db and mlartifacts/ in the project.
    assert run.info.artifact_uri.startswith((root / "mlartifacts").resolve().as_uri())
    assert not (root / "mlruns").exists()

    # After `dvc repro`, a second flow run repeats no stage work (and no download), registers nothing new
    # and does not put the same model through the gate again.
    again = pipeline(params="params.yaml", root=str(root))
    assert not any(again["stages_ran"].values())
    assert again["data"]["skipped"]
    assert not again["registered"]["new"] and "gate" not in again
    assert again["registered"]["version"] == result["registered"]["version"]
    assert len(client.search_model_versions("name='cxr-classifier'")) == 1
    assert client.get_run(again["registered"]["run_id"]).data.tags["registration"] == "unchanged"


def test_cli_steps_and_dvc_repro_share_the_stages(tmp_path: Path) -> None:
    """A change to the bootstrap re-runs the steps that draw intervals (evaluate, and gradcam, whose intervals
    are drawn as evaluate's) and the report that shows them, never the split or the training."""
    root = make_project(tmp_path / "p", small_params())
    assert cxr(root, "download").returncode == 0
    out = dvc(root, "repro")
    assert out.count("Running stage") == 5
    assert (root / "reports" / "report.html").stat().st_size > 10_000
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert params["evaluate"]["n_boot"] != 30
    params["evaluate"]["n_boot"] = 30
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc(root, "repro")
    assert "Running stage 'evaluate'" in out and "Running stage 'gradcam'" in out and "Running stage 'report'" in out
    assert "Running stage 'split'" not in out and "Running stage 'train'" not in out


def test_local_sample_ingests_and_trains_or_says_why(tmp_path: Path, sample_dir: Path) -> None:
    from cxr.data.split import split
    from cxr.evaluation.evaluate import evaluate
    from cxr.evaluation.gradcam import gradcam
    from cxr.reporting.report import report
    from cxr.training.loop import train

    # Four classes: Lung_Opacity has a single image, so `cxr split` refuses, naming the class and the keys.
    four = small_params(download={"source": "local", "local": {"path": str(sample_dir)}})
    root = make_project(tmp_path / "four", four)
    download_in_process(root)
    assert (root / "data" / "raw" / "Viral Pneumonia.zip").is_file()  # one uncompressed zip per class folder
    assert not (root / "data" / "raw" / "Viral Pneumonia").exists()
    proc = cxr(root, "split")
    assert proc.returncode == 1
    assert "Lung_Opacity" in proc.stderr and "split.valid" in proc.stderr
    assert not (root / "data" / "split" / "manifest.csv").exists()

    # Three classes (a params change): real PNG and JPEG images go through every stage's function (the same
    # ones the stages' commands call; that DVC runs those commands is test_cli_steps_... above). Training needs
    # no more than a few real files per class to run or fail: the first 40 of each, in the same layout.
    subset = tmp_path / "subset"
    for cls in ("COVID", "Normal", "Viral Pneumonia"):
        (subset / cls / "images").mkdir(parents=True)
        for f in sorted((sample_dir / cls / "images").iterdir())[:40]:
            shutil.copy(f, subset / cls / "images" / f.name)
    three = small_params(
        base={"classes": ["COVID", "Normal", "Viral Pneumonia"]},
        download={"source": "local", "local": {"path": str(subset)}},
        split={"valid": 24, "test": 24},
        train={"epochs": 1},
    )
    root = make_project(tmp_path / "three", three)
    download_in_process(root)
    s = parse_settings(three)
    paths = s.paths(root)
    split(s.base, s.split, paths)
    result = train(s.train, s.base, paths, False)
    assert result.best_epoch == 1 and paths.best_checkpoint.is_file()
    evaluate(s.base, s.evaluate, paths, s.train.device)
    gradcam(s.base, s.gradcam, paths, s.train.device)
    assert report(s, paths).stat().st_size > 10_000
    metrics = json.loads((root / "reports" / "metrics_full.json").read_text())
    assert metrics["n"] == 24 and set(metrics["per_class"]) == {"COVID", "Normal", "Viral Pneumonia"}


def test_bad_input_stops_before_training_and_leaves_nothing(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", small_params())
    download_in_process(root)
    victim = root / "data" / "raw" / "Normal.zip"
    victim.write_bytes(victim.read_bytes()[:100])  # truncated
    # Restores from the DVC cache when the recorded data was tampered with.
    proc = cxr(root, "download")
    assert proc.returncode == 0
    assert "unchanged" in proc.stdout
    # A missing class archive: the split names it, and no manifest or model appears.
    (root / "data" / "raw" / "Viral Pneumonia.zip").unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "repro"], cwd=root, capture_output=True, text=True, env=dvc_env()
    )
    assert proc.returncode != 0
    assert "Viral Pneumonia" in proc.stdout + proc.stderr
    assert not (root / "data" / "split" / "manifest.csv").exists()
    assert not (root / "models" / "best.pt").exists()


def test_a_run_log_shows_progress_and_no_request_lines(tmp_path: Path) -> None:
    """What `make run` prints when it is not a terminal (a log file, CI): progress lines of the long loops, the
    pipeline's own lines, and none of the HTTP request lines or DVC's advice."""
    import os

    # Batches smaller than the splits, so that every loop has a step after its first one to report.
    root = make_project(tmp_path / "p", small_params(evaluate={"batch_size": 8}, gradcam={"batch_size": 8}))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(CXR_PROGRESS_S="0", PREFECT_HOME=str(tmp_path / "prefect"))
    proc = subprocess.run(
        [sys.executable, "-m", "cxr", "run"], cwd=root, capture_output=True, text=True, env=env, timeout=900
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "\r" not in log  # no progress bar in a file
    for what in (
        "epoch 1/2: ",
        "decoding images at 32 px: ",
        "scoring the test split: ",
        "Grad-CAM on the test split: ",
    ):
        assert any(what in line and " img/s, ETA " in line for line in log.splitlines()), what
    for noise in ("HTTP Request", "To track the changes with git", "Use `dvc push`", "dvc config core.autostage"):
        assert noise not in log, noise
    # A stage's lines are relayed with one time stamp, the flow's, and at their own level.
    stamp = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
    epochs = [line for line in log.splitlines() if "cxr.training.loop: epoch 1/2" in line]
    assert epochs and all(len(stamp.findall(line)) == 1 for line in epochs), epochs[:3]
