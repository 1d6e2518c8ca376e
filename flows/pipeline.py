"""The pipeline flow: download, the DVC stages of dvc.yaml, the drift check, registration and the gate."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from cxr.core.config import load_settings
from cxr.core.io import read_json
from cxr.core.logs import quiet_clients
from cxr.ops.dvc import pipeline_stages
from cxr.ops.notify import notify_failure
from cxr.ops.tracking import check_tracking, tracking_uri
from cxr.reporting.summary import data_report_markdown, metrics_markdown
from tasks.pipeline_tasks import (
    FLOW_TIMEOUT_S,
    check_drift,
    download_data,
    gate_version,
    push_outputs,
    register_model,
    repro_stage,
)

#: Fixed artifact keys: each run adds a version, so the UI shows the history of each.
METRICS_ARTIFACT = "cxr-test-metrics"
DATA_REPORT_ARTIFACT = "cxr-data-report"


def publish_data_report(report_path: Path, data_version: str | None) -> bool:
    """Publish the split's data report as a Markdown artifact; False when the split wrote none."""
    report = read_json(report_path)
    if report is None:
        return False
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
    quiet_clients(settings.base.log_level)  # a worker runs the flow without the command line's set-up
    check_tracking(tracking_uri(root_path))  # an unreachable tracking server fails before training
    paths = settings.paths(root_path)
    data = download_data(params_path, str(root_path))
    # Stages run one at a time, in dvc.yaml's order: a failed stage raises here, so later stages and the
    # registration never run, and DVC records nothing for the failed stage.
    ran = {stage: repro_stage(stage, str(root_path)) for stage in pipeline_stages(root_path)}
    publish_data_report(paths.data_report, data["data_version"])
    result: dict = {"data": data, "stages_ran": ran, "pushed": push_outputs(str(root_path))}
    # Before the gate, which holds a passing version back on drift (drift.block_promotion) from this report.
    result["drift"] = check_drift(params_path, str(root_path)) if settings.drift.enabled else None
    if settings.registry.enabled:
        registered = register_model(params_path, str(root_path))
        result["registered"] = registered
        if registered["new"]:
            result["gate"] = gate_version(params_path, str(root_path), registered["version"])
        else:  # the same model was judged when it was registered: the gate does not decide again
            logger.info("inputs unchanged: version %s stands, no new version, no gate", registered["version"])
    create_markdown_artifact(
        key=METRICS_ARTIFACT,
        markdown=metrics_markdown(read_json(paths.metrics_full), read_json(paths.cam_metrics_full, {})),
        description=f"Test metrics of data version {data['data_version']}",
    )
    logger.info("pipeline finished: %s", {k: v for k, v in result.items() if k != "data"})
    return result


if __name__ == "__main__":  # pragma: no cover
    pipeline()
