"""The register step: one MLflow run per pipeline run (params, lineage, metrics, figures, model) and a new registered version."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cxr.config import ResolvedPaths, Settings
from cxr.dvcops import data_version, file_hash

log = logging.getLogger(__name__)


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server cannot be reached."""


@dataclass(frozen=True)
class RegisterResult:
    """The MLflow run and the registered model version."""

    run_id: str
    model_name: str
    version: str
    tracking_uri: str


def tracking_uri(root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the sqlite store in the project."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"


def check_tracking(uri: str, timeout_s: float = 5.0) -> None:
    """Fail within seconds when a remote tracking server does not answer (before any training)."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as resp:
            if resp.status >= 400:
                raise TrackingUnavailable(f"MLflow tracking server {uri} answered {resp.status} on /health")
    except (urllib.error.URLError, OSError) as err:
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} is unreachable ({getattr(err, 'reason', err)}); "
            "start it or unset MLFLOW_TRACKING_URI to use the local sqlite store"
        ) from None


def git_commit(root: Path) -> tuple[str, bool]:
    """The checked-out commit and whether the work tree has uncommitted changes."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True)
        return sha.stdout.strip(), bool(dirty.stdout.strip())
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown", False


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """Nested mapping to dotted keys."""
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _experiment(mlflow, name: str, root: Path) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        location = (root / "mlartifacts").resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def register(settings: Settings, paths: ResolvedPaths) -> RegisterResult:
    """Log the pipeline's outputs to one MLflow run and register the best checkpoint as a new model version."""
    import mlflow
    import torch
    import torchvision

    from cxr.metrics import flat_metrics
    from cxr.train import load_trained

    root = paths.root
    uri = tracking_uri(root)
    check_tracking(uri)
    mlflow.set_tracking_uri(uri)
    exp_id = _experiment(mlflow, settings.base.experiment, root)

    metrics = json.loads(paths.metrics.read_text())
    cam_path = paths.gradcam_reports / "metrics.json"
    cam = json.loads(cam_path.read_text()) if cam_path.is_file() else {}
    commit, dirty = git_commit(root)
    lineage = {
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "data_version": data_version(root) or "unknown",
        "dvc_lock_sha256": file_hash(root / "dvc.lock") or "none",
        "params_hash": settings.fingerprint(),
        "data_source": settings.download.source,
    }
    model, meta = load_trained(paths.best_checkpoint)
    size = int(meta["image_size"])

    with mlflow.start_run(experiment_id=exp_id, run_name=f"pipeline-{commit[:8]}") as run:
        mlflow.set_tags(lineage)
        mlflow.log_params({k: json.dumps(v) if isinstance(v, (list, dict)) else v
                           for k, v in flatten(settings.model_dump(mode="json")).items()})
        history = paths.train_reports / "history.csv"
        if history.is_file():
            with history.open() as fh:
                for row in csv.DictReader(fh):
                    step = int(row.pop("epoch"))
                    mlflow.log_metrics({f"epoch/{k}": float(v) for k, v in row.items() if v != ""}, step=step)
        mlflow.log_metrics(flat_metrics(metrics, "test/"))
        mlflow.log_metrics({f"cam/{k}": float(v) for k, v in flatten(cam).items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
        mlflow.log_artifacts(str(paths.eval_reports), "evaluation")
        if paths.gradcam_reports.is_dir():
            mlflow.log_artifacts(str(paths.gradcam_reports), "gradcam")
        for extra in (paths.data_report, paths.train_reports / "history.csv", root / "params.yaml", root / "dvc.lock"):
            if extra.is_file():
                mlflow.log_artifact(str(extra), "pipeline")
        import numpy as np

        example = np.zeros((1, 1, size, size), dtype=np.float32)
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            serialization_format="pickle",
            input_example=example,
            pip_requirements=[
                f"torch=={torch.__version__.split('+')[0]}",
                f"torchvision=={torchvision.__version__.split('+')[0]}",
            ],
            metadata={"classes": list(meta["classes"]), "image_size": size, "arch": meta["arch"]},
        )
        mv = mlflow.register_model(info.model_uri, settings.base.model_name, tags=lineage)
        run_id = run.info.run_id
    log.info("MLflow run %s; registered %s version %s", run_id, settings.base.model_name, mv.version)
    return RegisterResult(run_id, settings.base.model_name, str(mv.version), uri)
