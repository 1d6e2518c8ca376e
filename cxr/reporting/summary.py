"""Markdown summaries of a run (test metrics, the data report) for Prefect artifacts and notices."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cxr.ops.markdown import ci, table
from cxr.reporting.report import BINARY_KEYS, OVERALL_KEYS, PER_CLASS_KEYS

#: The Grad-CAM headline figures, with their labels.
CAM_KEYS = (
    ("lung_energy", "share of CAM energy inside the lungs"),
    ("lung_area_fraction", "lung share of the image (the energy share of a uniform map)"),
    ("pointing_game", "pointing game: peak inside the lesion"),
    ("pointing_game_chance", "pointing game by chance"),
)
SPLITS = ("train", "valid", "test")


def metrics_markdown(metrics: Mapping[str, Any], cam: Mapping[str, Any] | None = None) -> str:
    """The headline test metrics as Markdown tables (a Prefect artifact): overall, per class, binary, sources, CAM."""
    rows = [(label, ci(metrics, key)) for key, label in OVERALL_KEYS if key in metrics]
    cal = metrics.get("calibration") or {}
    rows += [
        (label, f"{cal[key]:.3f}")
        for key, label in (("ece", "ECE"), ("brier", "Brier"), ("temperature", "temperature"))
        if cal.get(key) is not None
    ]
    lines = [
        f"## Test metrics (n = {metrics.get('n', 'n/a')}, 95% bootstrap CI)",
        "",
        *table(["metric", "value"], rows),
    ]
    per_class = metrics.get("per_class") or {}
    if per_class:
        lines += [
            "",
            *table(
                ["class", "support", *PER_CLASS_KEYS],
                (
                    [name, block.get("support", "n/a"), *(ci(block, k) for k in PER_CLASS_KEYS)]
                    for name, block in per_class.items()
                ),
            ),
        ]
    binary = metrics.get("binary")
    if binary:
        lines += [
            "",
            f"**{binary.get('positive')} vs rest** (threshold {binary.get('threshold', 0):.3f}): "
            + ", ".join(f"{k} {ci(binary, k)}" for k in BINARY_KEYS),
        ]
    by_source = metrics.get("per_source") or {}
    if by_source:
        lines += [
            "",
            *table(["source", "n", "accuracy"], ((s, b.get("n"), ci(b, "accuracy")) for s, b in by_source.items())),
        ]
    cam_rows = [(label, f"{(cam or {})[key]:.3f}") for key, label in CAM_KEYS if (cam or {}).get(key) is not None]
    if cam_rows:
        lines += ["", *table(["Grad-CAM", "value"], cam_rows)]
    return "\n".join(lines) + "\n"


def data_report_markdown(report: Mapping[str, Any]) -> str:
    """The split's data report as Markdown: images per class and split, duplicates, image sizes and modes."""
    counts: dict[str, dict[str, int]] = report.get("counts") or {}
    totals = {s: sum(int(per.get(s, 0)) for per in counts.values()) for s in SPLITS}
    rows = [[cls, *(per.get(s, 0) for s in SPLITS), sum(per.values())] for cls, per in counts.items()]
    rows.append(["**all**", *(totals[s] for s in SPLITS), sum(totals.values())])
    lines = table(["class", *SPLITS, "total"], rows, right=range(1, 5))
    dup = report.get("duplicates") or {}
    if dup:
        conflicts = dup.get("label_conflicts")
        n_conflicts = len(conflicts) if isinstance(conflicts, list) else conflicts
        lines += [
            "",
            f"Near-duplicate groups: {dup.get('groups', 0)} ({dup.get('images_in_groups', 0)} images), "
            f"exact copies: {dup.get('exact_copies', 0)}, groups crossing splits: "
            f"{dup.get('groups_crossing_splits', 0)}, groups with conflicting labels: {n_conflicts or 0}.",
        ]
    for key, title in (("sizes", "Image sizes"), ("modes", "Image modes")):
        if report.get(key):
            lines.append(f"{title}: " + ", ".join(f"{k} ({v})" for k, v in report[key].items()) + ".")
    skipped = report.get("skipped") or []
    if skipped:
        lines += [
            "",
            f"Left out of the data (download.policy 'skip'): {len(skipped)} file(s).",
            "",
            *table(["file", "reason"], ((f"`{s['path']}`", s["reason"]) for s in skipped)),
        ]
    return "\n".join(lines)
