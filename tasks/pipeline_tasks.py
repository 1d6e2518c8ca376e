"""The Prefect tasks of the pipeline; each calls the one implementation of its step and returns paths and ids."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from prefect import get_run_logger, task

from cxr.core.config import load_settings
from cxr.ops.dvc import DvcError, DvcLockBusy, StageKilled, run_dvc, stream_command

#: The DVC stages in pipeline order (dvc.yaml owns their commands, deps and outs).
STAGES: tuple[str, ...] = ("split", "train", "evaluate", "gradcam", "report")

# Time limits (seconds). Generous on purpose: they exist to free a hung worker (a stalled download,
# a deadlocked DataLoader), not to police slow hardware. Full data on a CPU is the slow case.
DOWNLOAD_TIMEOUT_S = 2 * 3600  # 1.8 GB from Kaggle, then every image decoded and checked
STAGE_TIMEOUT_S = 8 * 3600  # one DVC stage; training on the full dataset dominates
REGISTER_TIMEOUT_S = 15 * 60  # one MLflow run and a ~50 MB model upload
FLOW_TIMEOUT_S = 24 * 3600  # the whole run; below the weekly schedule so runs cannot pile up

#: Fixed artifact key: the history of what each run registered, or that it found nothing new.
REGISTRATION_ARTIFACT = "cxr-registration"

#: Errors that can heal by themselves when tried again (network, a busy server, a flaky disk).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, OSError)
#: OSErrors that say the input is wrong, not that the world is flaky: retrying cannot help.
PERMANENT_OS_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError,
)
def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is worth a retry: network or I/O trouble, an unreachable tracker, a busy DVC lock."""
    from cxr.core.sections import ConfigError
    from cxr.ops.tracking import TrackingUnavailable

    if isinstance(exc, (ConfigError, ValueError, *PERMANENT_OS_ERRORS)):
        return False
    return isinstance(exc, (*TRANSIENT_ERRORS, TrackingUnavailable, DvcLockBusy, StageKilled))


def _transient(task, task_run, state) -> bool:
    """Prefect retry condition: retry only what can heal by itself, never a deterministic failure."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - we classify, Prefect re-raises
        return is_transient(exc)
    return False


def stream_dvc(args: list[str], root: Path, logger: logging.Logger | logging.LoggerAdapter) -> str:
    """``run_dvc`` with DVC's output streamed line by line into ``logger``."""
    logger.info("running `dvc %s` in %s", " ".join(args), root)
    return run_dvc(args, root, on_line=lambda line: logger.info("%s", line) if line.strip() else None)


@task(
    name="download", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=_transient,
    timeout_seconds=DOWNLOAD_TIMEOUT_S,
)
def download_data(params: str, root: str) -> dict:
    """Fetch or generate ``data/raw`` and version it in ``data.dvc``."""
    from cxr.data.download import download

    s = load_settings(params)
    res = download(s.base, s.download, s.paths(Path(root)))
    get_run_logger().info("data version %s (%s)", res.data_version, "unchanged" if res.skipped else "new")
    return {"raw": str(res.raw), "data_version": res.data_version, "skipped": res.skipped, "counts": res.counts}


@task(
    name="dvc-stage", retries=1, retry_delay_seconds=[30], retry_condition_fn=_transient,
    timeout_seconds=STAGE_TIMEOUT_S, task_run_name="dvc repro {stage}",
)
def repro_stage(stage: str, root: str) -> bool:
    """Run one ``dvc.yaml`` stage through DVC (which skips it when nothing changed); True when it ran.

    A stage that failed on its own is not retried. One whose process was killed (out of memory, a
    pre-empted machine) is: training then resumes from ``last.pt``, which DVC keeps (``persist``).
    A busy DVC repository lock is retried too. DVC records nothing in ``dvc.lock`` for a failed stage.
    """
    logger = get_run_logger()
    out = stream_dvc(["repro", "--single-item", stage], Path(root), logger)
    ran = bool(re.search(rf"Running stage '{re.escape(stage)}'", out))
    logger.info("stage %s: %s", stage, "ran" if ran else "up to date, skipped")
    return ran


@task(
    name="register", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=_transient,
    timeout_seconds=REGISTER_TIMEOUT_S,
)
def register_model(params: str, root: str) -> dict:
    """Log the run to MLflow and register a new model version, or point to the version with the same inputs."""
    from prefect.artifacts import create_markdown_artifact

    from cxr.registry.register import register

    s = load_settings(params)
    res = register(s, s.paths(Path(root)), Path(params))
    if res.new:
        text = f"**{res.model_name} version {res.version}** registered (MLflow run `{res.run_id}`)."
    else:
        text = (f"**Nothing new.** Data, params and code equal those of {res.model_name} version {res.version}: "
                f"no version registered, the gate did not run (MLflow run `{res.run_id}` records this run).")
    create_markdown_artifact(key=REGISTRATION_ARTIFACT, markdown=text, description="What this run registered")
    return {"run_id": res.run_id, "model": res.model_name, "version": res.version, "tracking_uri": res.tracking_uri,
            "new": res.new}


@task(
    name="drift", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=_transient,
    timeout_seconds=REGISTER_TIMEOUT_S,
)
def check_drift(params: str, root: str, data_version: str | None) -> dict:
    """Compare the current data with the champion's; publish the report, log it to MLflow, notify on drift."""
    DRIFT_ARTIFACT = "cxr-drift"
    from prefect.artifacts import create_markdown_artifact

    from cxr.monitoring.drift import drift, log_to_mlflow
    from cxr.ops.notify import notify_drift
    from cxr.ops.tracking import tracking_uri

    s = load_settings(params)
    root_path = Path(root)
    uri = tracking_uri(root_path)
    report = drift(s, s.paths(root_path), uri)
    create_markdown_artifact(key=DRIFT_ARTIFACT, markdown=report.markdown(),
                             description=f"Data drift of data version {data_version} against the champion")
    # Nothing measured (no champion yet) leaves nothing in MLflow.
    run_id = log_to_mlflow(report, s, uri, root_path, data_version) if report.status == "checked" else None
    if report.flagged and s.drift.notify:
        notify_drift("; ".join(report.reasons), {"data_version": data_version, "mlflow_run_id": run_id,
                                                 "champion_version": report.champion_version, "tests": report.tests})
    block = report.flagged and s.drift.block_promotion
    get_run_logger().info("drift: %s%s", "; ".join(report.reasons) or report.status,
                          " (promotion blocked)" if block else "")
    return {"status": report.status, "flagged": report.flagged, "block_promotion": block, "reasons": report.reasons,
            "mlflow_run_id": run_id}


@task(
    name="gate", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=_transient,
    timeout_seconds=REGISTER_TIMEOUT_S,
)
def gate_version(params: str, root: str, version: str, blocked_by: str | None = None) -> dict:
    """Make the new version the challenger and run the promotion gate; record the decision.

    ``blocked_by`` (the drift check's reasons) keeps the gate from promoting even when it passes.
    """
    from mlflow import MlflowClient
    from prefect.artifacts import create_markdown_artifact

    from cxr.ops.tracking import tracking_uri
    from cxr.registry.promote import register_challenger

    s = load_settings(params)
    paths = s.paths(Path(root))
    registry = s.registry.model_copy(update={"auto_promote": False}) if blocked_by else s.registry
    res = register_challenger(
        MlflowClient(tracking_uri(Path(root))), s.base.model_name, version, registry, paths.manifest, paths.raw
    )
    verdict = "promoted to champion" if res.promotion else ("passed" if res.decision.promote else "refused")
    if blocked_by and res.decision.promote:
        verdict = f"passed, not promoted: data drift ({blocked_by})"
    reasons = "\n".join(f"- {r}" for r in res.decision.reasons)
    create_markdown_artifact(
        key="cxr-promotion",
        markdown=f"**{s.base.model_name} version {version}: {verdict}**\n\n{reasons}\n",
        description="Promotion gate decision",
    )
    get_run_logger().info("%s version %s: %s", s.base.model_name, version, verdict)
    return {"version": version, "promote": res.decision.promote, "promoted": res.promotion is not None,
            "reasons": res.decision.reasons}


__all__ = [
    "STAGES", "check_drift", "download_data", "repro_stage", "register_model", "gate_version", "DvcError", "DvcLockBusy", "StageKilled",
    "is_transient", "stream_command", "stream_dvc",
]
