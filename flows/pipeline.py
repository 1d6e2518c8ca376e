"""The pipeline flow: download, the DVC stages (split, train, evaluate, gradcam), register."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from cxr.config import load_settings
from cxr.register import check_tracking, tracking_uri
from tasks.pipeline_tasks import STAGES, download_data, register_model, repro_stage


def metrics_markdown(metrics: dict, cam: dict) -> str:
    """A Markdown table of the headline test metrics with their intervals."""
    rows = ["| metric | value | 95% CI |", "| --- | ---: | --- |"]
    for key in ("accuracy", "macro_auc", "macro_f1", "macro_sensitivity", "macro_specificity"):
        if metrics.get(key) is not None:
            lo, hi = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
            ci = f"{lo:.3f} to {hi:.3f}" if lo is not None and hi is not None else ""
            rows.append(f"| {key} | {metrics[key]:.4f} | {ci} |")
    for key in ("lung_energy", "pointing_game", "pointing_game_chance"):
        if cam.get(key) is not None:
            rows.append(f"| Grad-CAM {key} | {cam[key]:.3f} | |")
    return "\n".join(rows)


@flow(name="cxr-pipeline")
def pipeline(params: str = "params.yaml", root: str = ".") -> dict:
    """Run every step; stages already up to date in ``dvc.lock`` do no work."""
    logger = get_run_logger()
    root_path = Path(root).resolve()
    params_path = str((root_path / params) if not Path(params).is_absolute() else Path(params))
    settings = load_settings(params_path)  # bad params fail here, before any work
    check_tracking(tracking_uri(root_path))  # an unreachable tracking server fails before training
    data = download_data(params_path, str(root_path))
    ran = {stage: repro_stage(stage, str(root_path)) for stage in STAGES}
    result: dict = {"data": data, "stages_ran": ran}
    paths = settings.paths(root_path)
    metrics = json.loads(paths.metrics.read_text())
    cam_file = paths.gradcam_reports / "metrics.json"
    cam = json.loads(cam_file.read_text()) if cam_file.is_file() else {}
    if settings.registry.enabled:
        result["registered"] = register_model(params_path, str(root_path))
    create_markdown_artifact(
        key="cxr-test-metrics",
        markdown=metrics_markdown(metrics, cam),
        description=f"Test metrics of data version {data['data_version']}",
    )
    logger.info("pipeline finished: %s", {k: v for k, v in result.items() if k != "data"})
    return result


if __name__ == "__main__":  # pragma: no cover
    pipeline()
