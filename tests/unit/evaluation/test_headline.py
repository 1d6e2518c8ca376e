"""The headline files: short keys for a narrow `dvc metrics show`, read back under the full metrics' names."""

from __future__ import annotations

from cxr.evaluation.headline import as_full, headline_files
from cxr.ops.tracking import flat_metrics

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
    assert files["test.json"] == {"acc": 0.8125, "auc": 0.9313, "f1": 0.8, "ece": 0.031}
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
    assert all(abs(pipeline[k] - v) < 1e-4 for k, v in sweep.items())  # the same figures, to the files' digits
