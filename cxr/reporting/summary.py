"""Markdown summaries of a run (test metrics, the data report) for Prefect artifacts and notices."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cxr.reporting.report import _BINARY_KEYS, _OVERALL_KEYS, _PER_CLASS_KEYS


def md_ci(block: Mapping[str, Any], key: str) -> str:
    """'0.912 [0.880, 0.940]' in plain text."""
    point = block.get(key)
    if point is None:
        return "n/a"
    lo, hi = block.get(f"{key}_ci_low"), block.get(f"{key}_ci_high")
    return f"{point:.3f}" if lo is None or hi is None else f"{point:.3f} [{lo:.3f}, {hi:.3f}]"


def md_cell(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def metrics_markdown(metrics: Mapping[str, Any], cam: Mapping[str, Any] | None = None) -> str:
    """The headline test metrics as Markdown tables (a Prefect artifact): overall, per class, binary, sources, CAM."""
    lines = [f"## Test metrics (n = {metrics.get('n', 'n/a')}, 95% bootstrap CI)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {label} | {md_ci(metrics, key)} |" for key, label in _OVERALL_KEYS if key in metrics]
    cal = metrics.get("calibration") or {}
    for key, label in (("ece", "ECE"), ("brier", "Brier"), ("temperature", "temperature")):
        if cal.get(key) is not None:
            lines.append(f"| {label} | {cal[key]:.3f} |")
    per_class = metrics.get("per_class") or {}
    if per_class:
        lines += ["", "| class | support | " + " | ".join(_PER_CLASS_KEYS) + " |", "|---" * (len(_PER_CLASS_KEYS) + 2) + "|"]
        for name, block in per_class.items():
            cells = [md_ci(block, k) for k in _PER_CLASS_KEYS]
            lines.append(f"| {md_cell(name)} | {block.get('support', 'n/a')} | " + " | ".join(cells) + " |")
    binary = metrics.get("binary")
    if binary:
        lines += ["", f"**{md_cell(binary.get('positive'))} vs rest** (threshold {binary.get('threshold', 0):.3f}): "
                  + ", ".join(f"{k} {md_ci(binary, k)}" for k in _BINARY_KEYS)]
    by_source = metrics.get("per_source") or {}
    if by_source:
        lines += ["", "| source | n | accuracy |", "|---|---|---|"]
        lines += [f"| {md_cell(s)} | {b.get('n')} | {md_ci(b, 'accuracy')} |" for s, b in by_source.items()]
    cam_rows = [(label, (cam or {}).get(key)) for key, label in _CAM_KEYS]
    if any(v is not None for _, v in cam_rows):
        lines += ["", "| Grad-CAM | value |", "|---|---|"]
        lines += [f"| {label} | {value:.3f} |" for label, value in cam_rows if value is not None]
    return "\n".join(lines) + "\n"


_CAM_KEYS = (
    ("lung_energy", "share of CAM energy inside the lungs"),
    ("lung_area_fraction", "lung share of the image (the energy share of a uniform map)"),
    ("pointing_game", "pointing game: peak inside the lesion"),
    ("pointing_game_chance", "pointing game by chance"),
)
