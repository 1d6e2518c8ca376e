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

#: Decimals shown: the table's columns stay narrow; the full files keep every digit.
DIGITS = 4


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
