"""The Prefect tasks of the pipeline: each calls the one implementation of its step, and only retries, logs
and publishes (artifacts with fixed keys, so the UI keeps each one's history). Tasks pass paths and ids."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from cxr.core.config import load_settings
from cxr.core.logs import relayed
from cxr.ops.dvc import (
    DvcError,
    DvcLockBusy,
    StageKilled,
    describe_remote,
    has_remote,
    is_hint,
    push,
    run_dvc,
    stream_command,
)

# Time limits (seconds). Generous on purpose: they exist to free a hung worker (a stalled download,
# a deadlocked DataLoader), not to police slow hardware. Full data on a CPU is the slow case.
DOWNLOAD_TIMEOUT_S = 2 * 3600  # 1.8 GB from Kaggle, then every image decoded and checked
STAGE_TIMEOUT_S = 8 * 3600  # one DVC stage; training on the full dataset dominates
REGISTER_TIMEOUT_S = 15 * 60  # one MLflow run and a ~50 MB model upload
FLOW_TIMEOUT_S = 24 * 3600  # the whole run; below the weekly schedule so runs cannot pile up

#: Fixed artifact keys: each run adds a version, so the UI shows the history of each.
REGISTRATION_ARTIFACT = "cxr-registration"
DRIFT_ARTIFACT = "cxr-drift"
PROMOTION_ARTIFACT = "cxr-promotion"

#: Errors that can heal by themselves when tried again (network, a busy server, a flaky disk).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, OSError)
#: OSErrors that say the input is wrong, not that the world is flaky: retrying cannot help.
PERMANENT_OS_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
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


def tracking_task(name: str):
    """A task that talks to the tracking server (drift, register, gate): quick retries on transient errors only."""
    return task(
        name=name,
        retries=2,
        retry_delay_seconds=[5, 30],
        retry_condition_fn=_transient,
        timeout_seconds=REGISTER_TIMEOUT_S,
    )


def stream_dvc(args: list[str], root: Path, logger: logging.Logger | logging.LoggerAdapter) -> str:
    """``run_dvc`` with DVC's output streamed line by line into ``logger``: a stage's log lines at their own
    level without their own time stamp (the logger adds one), DVC's advice only at DEBUG."""
    logger.info("running `dvc %s` in %s", " ".join(args), root)
    remote = has_remote(root)

    def emit(line: str) -> None:
        if line.strip():
            level, text = relayed(line)
            logger.log(logging.DEBUG if is_hint(line, remote) else level, "%s", text)

    return run_dvc(args, root, on_line=emit)


@task(
    name="download",
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=_transient,
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
    name="dvc-stage",
    retries=1,
    retry_delay_seconds=[30],
    retry_condition_fn=_transient,
    timeout_seconds=STAGE_TIMEOUT_S,
    task_run_name="dvc repro {stage}",
)
def repro_stage(stage: str, root: str) -> bool:
    """Run one ``dvc.yaml`` stage through DVC (which skips it when nothing changed); True when it ran.

    A stage that failed on its own is not retried. One whose process was killed (out of memory, a
    pre-empted machine) is: training then resumes from ``models/last.pt``, which is not a DVC output, so DVC
    leaves it in place.
    A busy DVC repository lock is retried too. DVC records nothing in ``dvc.lock`` for a failed stage.
    """
    logger = get_run_logger()
    out = stream_dvc(["repro", "--single-item", stage], Path(root), logger)
    ran = bool(re.search(rf"Running stage '{re.escape(stage)}'", out))
    logger.info("stage %s: %s", stage, "ran" if ran else "up to date, skipped")
    return ran


@task(
    name="dvc-push",
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=_transient,
    timeout_seconds=DOWNLOAD_TIMEOUT_S,
)
def push_outputs(root: str) -> bool:
    """Push the stages' outputs and the run-cache to the default DVC remote, when one is set; True when pushed.

    Teammates then ``dvc pull`` the outputs of a committed ``dvc.lock`` instead of reproducing them, and
    ``dvc repro`` takes a stage's outputs from the run-cache. An unreachable store is retried; a refusing one
    (no credentials, no such bucket) fails the run with the remote's name and endpoint.
    """
    logger = get_run_logger()
    if not has_remote(Path(root)):
        logger.info("no DVC remote configured: outputs stay in the local DVC cache")
        return False
    push(Path(root), run_cache=True)
    logger.info("pushed the outputs and the run-cache to DVC %s", describe_remote(Path(root)))
    return True


@tracking_task("drift")
def check_drift(params: str, root: str) -> dict:
    """The drift step (report, MLflow run, notice on drift); publish the report."""
    from cxr.monitoring.drift import drift
    from cxr.ops.tracking import tracking_uri

    s = load_settings(params)
    report = drift(s, s.paths(Path(root)), tracking_uri(Path(root)))
    create_markdown_artifact(
        key=DRIFT_ARTIFACT,
        markdown=report.markdown(),
        description="Data drift of the current data against the champion's",
    )
    get_run_logger().info("%s", report.summary())
    return {k: getattr(report, k) for k in ("status", "flagged", "reasons", "mlflow_run_id")}


@tracking_task("register")
def register_model(params: str, root: str) -> dict:
    """Log the run to MLflow and register a new model version, or point to the version with the same inputs."""
    from cxr.registry.register import register

    s = load_settings(params)
    res = register(s, s.paths(Path(root)), Path(params))
    create_markdown_artifact(key=REGISTRATION_ARTIFACT, markdown=res.summary(), description="What this run registered")
    get_run_logger().info("%s", res.summary())
    return {"model": res.model_name, **{k: getattr(res, k) for k in ("run_id", "version", "tracking_uri", "new")}}


@tracking_task("gate")
def gate_version(params: str, root: str, version: str) -> dict:
    """The promotion gate on the new version (the same step as ``cxr gate``); publish its verdict."""
    from mlflow import MlflowClient

    from cxr.ops.tracking import tracking_uri
    from cxr.registry.gate import gate

    s = load_settings(params)
    res = gate(s, s.paths(Path(root)), MlflowClient(tracking_uri(Path(root))), version)
    create_markdown_artifact(key=PROMOTION_ARTIFACT, markdown=res.markdown(), description="Promotion gate decision")
    get_run_logger().info("%s", res.lines()[0])
    return {
        "version": version,
        "promote": res.decision.promote,
        "promoted": res.promotion is not None,
        "held_by": res.held_by,
        "verdict": res.verdict,
        "reasons": res.decision.reasons,
    }


__all__ = [
    "check_drift",
    "download_data",
    "repro_stage",
    "push_outputs",
    "register_model",
    "gate_version",
    "DvcError",
    "DvcLockBusy",
    "StageKilled",
    "is_transient",
    "stream_command",
    "stream_dvc",
]
