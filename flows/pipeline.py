"""The pipeline flow: download, the DVC stages (split, train, evaluate, gradcam), register."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from cxr.core.config import load_settings
from cxr.ops.notify import notify_failure
from cxr.ops.tracking import check_tracking, tracking_uri
from cxr.reporting.summary import metrics_markdown
from tasks.pipeline_tasks import (
    FLOW_TIMEOUT_S,
    STAGES,
    check_drift,
    download_data,
    gate_version,
    register_model,
    repro_stage,
)

#: Fixed artifact keys: each run adds a version, so the UI shows the history of each.
METRICS_ARTIFACT = "cxr-test-metrics"
DATA_REPORT_ARTIFACT = "cxr-data-report"


def data_report_markdown(report: dict) -> str:
    """The split's data report as Markdown: images per class and split, duplicates, image sizes and modes."""
    counts: dict[str, dict[str, int]] = report.get("counts") or {}
    splits = ("train", "valid", "test")
    lines = ["| class | train | valid | test | total |", "| --- | ---: | ---: | ---: | ---: |"]
    totals = dict.fromkeys(splits, 0)
    for cls, per in counts.items():
        for s in splits:
            totals[s] += int(per.get(s, 0))
        lines.append(f"| {cls} | " + " | ".join(str(per.get(s, 0)) for s in splits) + f" | {sum(per.values())} |")
    lines.append("| **all** | " + " | ".join(str(totals[s]) for s in splits) + f" | {sum(totals.values())} |")
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
        lines += ["", f"Left out of the data (download.policy 'skip'): {len(skipped)} file(s).", "",
                  "| file | reason |", "| --- | --- |"]
        lines += [f"| `{s['path']}` | {s['reason'].replace('|', '/')} |" for s in skipped]
    return "\n".join(lines)


def publish_data_report(report_path: Path, data_version: str | None) -> bool:
    """Publish the split's data report as a Markdown artifact; False when the split wrote none."""
    if not report_path.is_file():
        return False
    report = json.loads(report_path.read_text())
    create_markdown_artifact(
        key=DATA_REPORT_ARTIFACT,
        markdown=data_report_markdown(report),
        description=f"Split and data checks of data version {data_version}",
    )
    return True


@flow(
    name="cxr-pipeline",
    timeout_seconds=FLOW_TIMEOUT_S,
    on_failure=[notify_failure],
    on_crashed=[notify_failure],
)
def pipeline(params: str = "params.yaml", root: str = ".") -> dict:
    """Run every step; stages already up to date in ``dvc.lock`` do no work."""
    logger = get_run_logger()
    root_path = Path(root).resolve()
    params_path = str((root_path / params) if not Path(params).is_absolute() else Path(params))
    settings = load_settings(params_path)  # bad params fail here, before any work
    check_tracking(tracking_uri(root_path))  # an unreachable tracking server fails before training
    paths = settings.paths(root_path)
    data = download_data(params_path, str(root_path))
    ran: dict[str, bool] = {}
    drift: dict | None = None
    # Stages run one at a time, in order: a failed stage raises here, so later stages and the
    # registration never run, and DVC records nothing for the failed stage.
    for stage in STAGES:
        ran[stage] = repro_stage(stage, str(root_path))
        if stage == "split":
            publish_data_report(paths.data_report, data["data_version"])
            # Before training, so the report stage can show it and the gate can be held back by it.
            drift = check_drift(params_path, str(root_path), data["data_version"]) if settings.drift.enabled else None
    result: dict = {"data": data, "stages_ran": ran, "drift": drift}
    metrics = json.loads(paths.metrics_full.read_text())
    cam_file = paths.cam_metrics_full
    cam = json.loads(cam_file.read_text()) if cam_file.is_file() else {}
    if settings.registry.enabled:
        registered = register_model(params_path, str(root_path))
        result["registered"] = registered
        if registered["new"]:
            blocked_by = "; ".join(drift["reasons"]) if drift and drift["block_promotion"] else None
            result["gate"] = gate_version(params_path, str(root_path), registered["version"], blocked_by)
        else:  # the same model was judged when it was registered: the gate does not decide again
            logger.info("inputs unchanged: version %s stands, no new version, no gate", registered["version"])
    create_markdown_artifact(
        key=METRICS_ARTIFACT,
        markdown=metrics_markdown(metrics, cam),
        description=f"Test metrics of data version {data['data_version']}",
    )
    logger.info("pipeline finished: %s", {k: v for k, v in result.items() if k != "data"})
    return result


if __name__ == "__main__":  # pragma: no cover
    pipeline()
