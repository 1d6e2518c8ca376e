"""The drift check's section of the HTML report logged with a registered version."""

from __future__ import annotations

from pathlib import Path

from cxr.monitoring.report import read_report
from cxr.stats.twosample import INTENSITY_FEATURES


def drift_sections(path: Path) -> list[tuple[str, str, str]]:
    """The drift check's section of the HTML report (id, title, HTML) when the flow wrote a drift report, else none."""
    from cxr.reporting.templating import render_html

    report = read_report(path)
    if report is None:
        return []
    title = "Data drift against the champion" if report.status == "checked" else "Data drift"
    counts = sorted(set(report.counts.get("reference", {})) | set(report.counts.get("current", {})))
    html = render_html(
        "report_drift.html.j2", drift=report, count_classes=counts, intensity_features=list(INTENSITY_FEATURES)
    )
    return [("drift", title, html)]
