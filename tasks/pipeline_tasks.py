"""The Prefect tasks of the pipeline; each calls the one implementation of its step and returns paths and ids."""

from __future__ import annotations

import re
from pathlib import Path

from prefect import get_run_logger, task

from cxr.config import load_settings
from cxr.dvcops import DvcError, run_dvc

#: The DVC stages in pipeline order (dvc.yaml owns their commands, deps and outs).
STAGES: tuple[str, ...] = ("split", "train", "evaluate", "gradcam")


def _transient(task, task_run, state) -> bool:
    """Retry only what can heal by itself (network, I/O), never a deterministic failure."""
    from cxr.config import ConfigError

    try:
        state.result()
    except ConfigError:
        return False
    except (ValueError, FileNotFoundError):
        return False
    except Exception:
        return True
    return False


@task(name="download", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=_transient)
def download_data(params: str, root: str) -> dict:
    """Fetch or generate ``data/raw`` and version it in ``data.dvc``."""
    from cxr.download import download

    s = load_settings(params)
    res = download(s.base, s.download, s.paths(Path(root)))
    get_run_logger().info("data version %s (%s)", res.data_version, "unchanged" if res.skipped else "new")
    return {"raw": str(res.raw), "data_version": res.data_version, "skipped": res.skipped, "counts": res.counts}


@task(name="dvc-stage", retries=1, retry_delay_seconds=[5], task_run_name="dvc repro {stage}")
def repro_stage(stage: str, root: str) -> bool:
    """Run one ``dvc.yaml`` stage through DVC (which skips it when nothing changed); True when it ran."""
    out = run_dvc(["repro", "--single-item", stage], Path(root))
    ran = bool(re.search(rf"Running stage '{re.escape(stage)}'", out))
    get_run_logger().info("stage %s: %s", stage, "ran" if ran else "up to date, skipped")
    return ran


@task(name="register", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=_transient)
def register_model(params: str, root: str) -> dict:
    """Log the run to MLflow and register a new model version."""
    from cxr.register import register

    s = load_settings(params)
    res = register(s, s.paths(Path(root)))
    return {"run_id": res.run_id, "model": res.model_name, "version": res.version, "tracking_uri": res.tracking_uri}


__all__ = ["STAGES", "download_data", "repro_stage", "register_model", "DvcError"]
