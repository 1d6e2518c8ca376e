"""Markdown summaries for the flow's artifacts: the metrics table and the data report."""

from __future__ import annotations

from cxr.reporting.summary import data_report_markdown, metrics_markdown


def test_metrics_markdown_rows_intervals_and_missing_keys() -> None:
    md = metrics_markdown(
        {"n": 400, "accuracy": 0.91234, "accuracy_ci_low": 0.88, "accuracy_ci_high": 0.94, "macro_auc": 0.97},
        {"lung_energy": 0.8123, "pointing_game": None},
    )
    assert "n = 400" in md
    assert "0.912" in md and "0.880" in md and "0.940" in md
    assert "| share of CAM energy inside the lungs | 0.812 |" in md
    assert "pointing game" not in md and "None" not in md


def test_data_report_markdown_counts_totals_and_duplicates() -> None:
    report = {
        "counts": {"COVID": {"train": 10, "valid": 2, "test": 3}, "Normal": {"train": 20, "valid": 4, "test": 5}},
        "duplicates": {
            "groups": 2,
            "images_in_groups": 5,
            "exact_copies": 1,
            "groups_crossing_splits": 0,
            "label_conflicts": [["a", "b"]],
        },
        "sizes": {"299x299": 44},
        "modes": {"L": 44},
    }
    md = data_report_markdown(report)
    assert "| COVID | 10 | 2 | 3 | 15 |" in md
    assert "| **all** | 30 | 6 | 8 | 44 |" in md
    assert "Near-duplicate groups: 2 (5 images), exact copies: 1" in md
    assert "conflicting labels: 1." in md
    assert "Image sizes: 299x299 (44)." in md
