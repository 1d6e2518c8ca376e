"""The headline figures written for ``dvc metrics show``: a short view of the full metrics files."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def headline_metrics(m: Mapping[str, Any]) -> dict[str, Any]:
    """The figures a reader compares across runs (``dvc metrics show``, a screen wide); the rest stays in the full file.

    Sensitivity per class is a table of its own (:func:`sensitivity_by_class`), one column per class.
    """
    out: dict[str, Any] = {k: m[k] for k in ("accuracy", "macro_auc", "macro_f1") if m.get(k) is not None}
    binary = m.get("binary") or {}
    if binary.get("sensitivity") is not None:
        out[f"{binary.get('positive', 'positive')}_vs_rest"] = {
            "sens": binary["sensitivity"],
            "spec": binary.get("specificity"),
        }
    ece = (m.get("calibration") or {}).get("ece")
    if ece is not None:
        out["ece"] = ece
    return out


def sensitivity_by_class(m: Mapping[str, Any]) -> dict[str, float]:
    """Test sensitivity (recall) of each class, by class name."""
    return {c: block["sensitivity"] for c, block in (m.get("per_class") or {}).items() if "sensitivity" in block}


#: Grad-CAM figures worth comparing across runs; the per-class breakdowns stay in the full file.
CAM_HEADLINE: tuple[str, ...] = ("lung_energy", "lung_area_fraction", "pointing_game", "pointing_game_chance")


def cam_headline(m: Mapping[str, Any]) -> dict[str, Any]:
    """The Grad-CAM headline: lung energy against the lungs' area, the pointing game against chance."""
    return {k: m[k] for k in CAM_HEADLINE if m.get(k) is not None}
