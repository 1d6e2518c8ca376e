"""The headline figures ``dvc metrics show`` and ``dvc metrics diff`` compare: a short view of the full files.

``dvc metrics show`` prints one row per metrics file and one column per key of any file, so the figures are
spread over small files that share short keys: the table stays one screen wide (160 columns) and needs no
arguments. ``base.paths.metrics`` is a folder of them (the test split as a whole, each class, the positive class
against the rest); the Grad-CAM step and the train step write one file each. Everything, with its interval, is
in the full files (``metrics_full.json``, the Grad-CAM folder's ``metrics.json``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Decimals shown: no wider than the short keys, so the table stays within 160 columns whatever the figures
#: (``tests/unit/evaluation/test_headline.py`` checks the widest case); the full files keep every digit.
DIGITS = 3


def _r(value: Any) -> Any:
    return round(float(value), DIGITS) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _file_name(label: str) -> str:
    """A class name as a file name (a row of the table): path separators are the only characters that cannot stay."""
    return label.replace("/", "_").replace("\\", "_") + ".json"


def headline_files(m: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """File name -> figures, for the folder ``base.paths.metrics``: ``test.json`` (accuracy, macro AUC and F1,
    ECE), one file per class (sensitivity, specificity) and ``<positive>_vs_rest.json`` (at its threshold)."""
    test = {"acc": m.get("accuracy"), "auc": m.get("macro_auc"), "f1": m.get("macro_f1")}
    test["ece"] = (m.get("calibration") or {}).get("ece")
    files = {"test.json": {k: _r(v) for k, v in test.items() if v is not None}}
    for label, block in (m.get("per_class") or {}).items():
        row = {"sens": block.get("sensitivity"), "spec": block.get("specificity")}
        files[_file_name(label)] = {k: _r(v) for k, v in row.items() if v is not None}
    binary = m.get("binary") or {}
    if binary.get("sensitivity") is not None:
        row = {"sens": binary["sensitivity"], "spec": binary.get("specificity")}
        files[_file_name(f"{binary.get('positive', 'positive')}_vs_rest")] = {
            k: _r(v) for k, v in row.items() if v is not None
        }
    return files


def cam_headline(m: Mapping[str, Any]) -> dict[str, Any]:
    """The Grad-CAM headline: the share of CAM energy inside the lungs, the pointing game's hit rate."""
    row = {"lungs": m.get("lung_energy"), "point": m.get("pointing_game")}
    return {k: _r(v) for k, v in row.items() if v is not None}


#: The test file's short keys and the full metrics' names for them (``metrics_full.json``'s, MLflow's ``test/...``).
TEST_NAMES: dict[str, tuple[str, ...]] = {
    "acc": ("accuracy",),
    "auc": ("macro_auc",),
    "f1": ("macro_f1",),
    "ece": ("calibration", "ece"),
}
#: A class's or the positive class's short keys and their full names.
RATE_NAMES: dict[str, str] = {"sens": "sensitivity", "spec": "specificity"}


def as_full(row: str, figures: Mapping[str, Any]) -> dict[str, Any]:
    """One headline file's figures (``row`` is its name without ``.json``) nested as ``metrics_full.json`` holds
    them, so that ``flat_metrics`` gives them the names the pipeline's MLflow runs use (``test/accuracy``,
    ``test/COVID/sensitivity``, ``test/binary/sensitivity``) wherever they were read from."""
    out: dict[str, Any] = {}
    if row == "test":
        for short, value in figures.items():
            *parents, leaf = TEST_NAMES.get(short, (short,))
            node = out
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
        return out
    rates = {RATE_NAMES.get(k, k): v for k, v in figures.items()}
    return {"binary": rates} if row.endswith("_vs_rest") else {"per_class": {row: rates}}
