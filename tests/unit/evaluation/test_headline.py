"""The headline files: short keys for a narrow `dvc metrics show`, read back under the full metrics' names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from cxr.evaluation.headline import DIGITS, as_full, cam_headline, headline_files
from cxr.ops.tracking import flat_metrics
from cxr.training.checkpoints import TrainState
from cxr.training.loop import write_summary

FULL = {
    "accuracy": 0.8125,
    "macro_auc": 0.93125,
    "macro_f1": 0.8,
    "calibration": {"ece": 0.031},
    "per_class": {
        "COVID": {"sensitivity": 1.0, "specificity": 0.98},
        "Viral Pneumonia": {"sensitivity": 0.9, "specificity": 0.96},
    },
    "binary": {"positive": "COVID", "sensitivity": 1.0, "specificity": 0.99},
}


def test_headline_files_hold_short_keys_one_file_per_row() -> None:
    files = headline_files(FULL)
    assert set(files) == {"test.json", "COVID.json", "Viral Pneumonia.json", "COVID_vs_rest.json"}
    assert files["test.json"] == {"acc": 0.812, "auc": 0.931, "f1": 0.8, "ece": 0.031}
    assert files["COVID_vs_rest.json"] == {"sens": 1.0, "spec": 0.99}


def test_a_sweep_logs_the_headline_under_the_names_a_pipeline_run_logs() -> None:
    """MLflow compares a sweep's runs with the pipeline's only when both use one name per figure."""
    pipeline = flat_metrics(FULL, "test/")
    sweep: dict[str, float] = {}
    for name, figures in headline_files(FULL).items():
        sweep.update(flat_metrics(as_full(name.removesuffix(".json"), figures), "test/"))
    assert set(sweep) == {
        "test/accuracy",
        "test/macro_auc",
        "test/macro_f1",
        "test/calibration/ece",
        "test/COVID/sensitivity",
        "test/COVID/specificity",
        "test/Viral Pneumonia/sensitivity",
        "test/Viral Pneumonia/specificity",
        "test/binary/sensitivity",
        "test/binary/specificity",
    }
    assert all(abs(pipeline[k] - v) <= 0.5 * 10**-DIGITS + 1e-12 for k, v in sweep.items())  # to the files' digits


def test_the_table_fits_160_columns_with_the_widest_figures(tmp_path: Path) -> None:
    """Every figure at its widest (all digits used, the longest class name, a GPU's speed, 100 epochs): the
    table as DVC prints it stays within one 160-column screen, whatever a run measures."""
    classes = yaml.safe_load((Path(__file__).parents[3] / "params.yaml").read_text())["base"]["classes"]
    widest = 0.123456789
    full = {
        "accuracy": widest,
        "macro_auc": widest,
        "macro_f1": widest,
        "calibration": {"ece": widest},
        "per_class": {c: {"sensitivity": widest, "specificity": widest} for c in classes},
        "binary": {"positive": "COVID", "sensitivity": widest, "specificity": widest},
    }
    reports = tmp_path / "reports"
    (reports / "metrics").mkdir(parents=True)
    for name, figures in headline_files(full).items():
        (reports / "metrics" / name).write_text(json.dumps(figures))
    (reports / "cam_metrics.json").write_text(
        json.dumps(cam_headline({"lung_energy": widest, "pointing_game": widest}))
    )
    row = {"val_accuracy": widest, "val_macro_f1": widest, "val_loss": 12.3456789}
    state = TrainState(best_epoch=100, history=[row] * 100)
    (reports / "train").mkdir()
    write_summary(reports / "train" / "metrics.json", state, mean_speed=98765.4321)
    metrics = ["reports/metrics", "reports/cam_metrics.json", "reports/train/metrics.json"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"metrics": metrics}))
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
    table = subprocess.run(
        [sys.executable, "-m", "dvc", "metrics", "show"], cwd=tmp_path, check=True, capture_output=True, text=True
    ).stdout
    assert "Viral Pneumonia.json" in table and "98765" in table, table
    assert max(map(len, table.splitlines())) <= 160, table
