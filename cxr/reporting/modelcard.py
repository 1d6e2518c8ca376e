"""The model card of a registered version (Markdown, from its template) and the test metrics copied onto it as tags."""

from __future__ import annotations

from cxr.core.config import Settings
from cxr.reporting.templating import render_text

#: Test metrics copied onto every registered version (point estimate and interval).
HEADLINE_METRICS: tuple[str, ...] = ("accuracy", "macro_auc")


def metric_tags(metrics: dict, positive: str | None) -> dict[str, str]:
    """Headline test metrics with their intervals as version tags (``test.accuracy``, ``test.accuracy_ci_low``, ...)."""
    tags: dict[str, str] = {}

    def put(prefix: str, block: dict, key: str) -> None:
        for suffix in ("", "_ci_low", "_ci_high"):
            value = block.get(f"{key}{suffix}")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                tags[f"{prefix}{key}{suffix}"] = f"{value:.6g}"

    for key in HEADLINE_METRICS:
        put("test.", metrics, key)
    if positive is not None:
        per_class = metrics.get("per_class", {}).get(positive)
        if per_class:
            # Sensitivity of the argmax decision, and at the threshold chosen on validation (the binary block).
            put(f"test.{positive}.", per_class, "sensitivity")
        binary = metrics.get("binary") or {}
        if binary.get("positive") == positive:
            put(f"test.{positive}.at_threshold.", binary, "sensitivity")
            if isinstance(binary.get("threshold"), (int, float)):
                tags[f"test.{positive}.threshold"] = f"{binary['threshold']:.6g}"
    if "n" in metrics:
        tags["test.n"] = str(metrics["n"])
    probes = metrics.get("probes") or {}
    for name in ("format", "lungs"):
        if name in probes:
            tags[f"probe.{name}.shortcut"] = str(bool(probes[name].get("shortcut"))).lower()
    if probes.get("summary"):
        tags["probe.summary"] = str(probes["summary"])[:500]
    return tags


def model_card(
    settings: Settings, meta: dict, metrics: dict, cam: dict, lineage: dict[str, str], data_report: dict | None = None
) -> str:
    """The model card (Markdown): use, data, classes, training, test metrics with CIs, calibration, CAMs, limits."""
    ci = (metrics.get("bootstrap") or {}).get("ci", settings.evaluate.ci)
    return render_text(
        "model_card.md.j2",
        settings=settings,
        meta=meta,
        metrics=metrics,
        cam=cam,
        lineage=lineage,
        data_report=data_report,
        classes=list(meta["classes"]),
        ci_pct=f"{ci * 100:.0f}%",
        best_epoch=int(meta.get("epoch", -1)) + 1,
    )


#: MLflow's registry stores a version description in a 5000-character column.
DESCRIPTION_LIMIT = 5000


def version_description(card: str, run_id: str, limit: int = DESCRIPTION_LIMIT) -> str:
    """The model card as a version description, cut at a line and pointing to the full artifact when too long."""
    if len(card) <= limit:
        return card
    note = f"\n\n(cut; the full card is the artifact model_card.md of run {run_id})\n"
    cut = card[: limit - len(note)]
    return cut[: cut.rfind("\n") if "\n" in cut else len(cut)] + note
