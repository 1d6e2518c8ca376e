"""The register step: one MLflow run per pipeline run (params, lineage, metrics, figures, the servable model,
a model card) and a new registered version carrying the lineage, the test metrics and the card."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from cxr.core.config import Settings
from cxr.core.io import read_csv, read_json
from cxr.core.paths import ResolvedPaths
from cxr.ops.lineage import data_version, file_hash, flatten, git_commit
from cxr.ops.tracking import TrackingUnavailable, check_tracking, ensure_experiment, tracking_uri
from cxr.registry.provenance import link_training_run, log_datasets, pipeline_datasets
from cxr.reporting.modelcard import metric_tags, model_card, version_description

log = logging.getLogger(__name__)


class ArtifactStoreUnavailable(TrackingUnavailable):
    """The tracking server answers but cannot store a run's files (its artifact store is down or refuses)."""


@dataclass(frozen=True)
class RegisterResult:
    """The MLflow run and the registered model version."""

    #: The MLflow run that records this pipeline run (a short one when nothing new was registered).
    run_id: str
    model_name: str
    #: The new version, or the existing one made from the same inputs.
    version: str
    tracking_uri: str
    #: False when a version made from the same inputs already existed: nothing was registered.
    new: bool = True
    #: The live run that trained the model (``cxr train``), nested under ``run_id``; None when there is none.
    train_run_id: str | None = None

    def summary(self) -> str:
        """What was registered, or why nothing was: the same words on the command line and in the flow."""
        if self.new:
            return f"MLflow run {self.run_id}: registered {self.model_name} version {self.version}"
        return (
            f"MLflow run {self.run_id}: nothing new; data, params and code equal those of {self.model_name} "
            f"version {self.version}, so no version is registered and the gate does not run "
            "(`cxr register --force` registers anyway)"
        )


#: Settings that do not change the model: a new log level, gate rule, drift rule or search space is not a new model.
_NOT_MODEL_INPUTS: tuple[tuple[str, ...], ...] = (("base", "log_level"), ("registry",), ("drift",), ("tune",))


def inputs_hash(settings: Settings, root: Path) -> str:
    """What a model version is made from: the data version, the params that shape it and the project's code.

    Two pipeline runs with the same inputs hash produce the same model, so the second registers nothing.
    """
    params = settings.model_dump(mode="json")
    for keys in _NOT_MODEL_INPUTS:
        node = params
        for k in keys[:-1]:
            node = node[k]
        node.pop(keys[-1], None)
    h = hashlib.sha256(json.dumps({"data": data_version(root), "params": params}, sort_keys=True).encode())
    package = root / "cxr"
    # Every file of the package, templates included: they shape the model card and report registered with it.
    for f in sorted(p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:32]


def find_version_by_inputs(client, name: str, key: str):
    """The newest registered version of ``name`` made from inputs ``key``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name='{name}' and tags.inputs_hash='{key}'")
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return max(found, key=lambda v: int(v.version), default=None)


def _create_version(
    client, name: str, source: str, run_id: str, model_id: str | None, tags: dict[str, str], description: str
):
    """Create the version in one call; a registered model made just for it is removed again when that fails."""
    from mlflow.exceptions import MlflowException

    created = False
    try:
        client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        try:
            client.create_registered_model(
                name, description=f"Chest X-ray classifier ({name}); see each version's model card."
            )
            created = True
        except MlflowException as err2:
            if err2.error_code != "RESOURCE_ALREADY_EXISTS":  # another registration created it meanwhile
                raise
    try:
        return client.create_model_version(
            name, source, run_id=run_id, tags=tags, description=description, model_id=model_id
        )
    except Exception:
        # Only an empty model made here is removed: another process may have registered a version meanwhile.
        if created and not client.search_model_versions(f"name='{name}'"):
            client.delete_registered_model(name)
        raise


def _log_registered_report(client, settings: Settings, paths: ResolvedPaths, run_id: str, version: str) -> None:
    """Log the report page to the run, naming the run and the version (known only now) in its lineage."""
    import tempfile

    from cxr.reporting.drift_section import drift_sections
    from cxr.reporting.report import report

    if not paths.metrics_full.is_file():
        return
    try:
        with tempfile.TemporaryDirectory(prefix="cxr-report-") as tmp:
            page = report(
                settings,
                paths,
                Path(tmp) / paths.report.name,
                registered={"run_id": run_id, "name": settings.base.model_name, "version": version},
                extra_sections=drift_sections(paths.drift),
            )
            client.log_artifact(run_id, str(page), "pipeline")
    except Exception:  # noqa: BLE001 - the version exists; failing now would make a retry register another
        log.exception("the report naming version %s could not be logged to run %s", version, run_id)


@dataclass(frozen=True)
class _Inputs:
    """Everything a version needs, read before MLflow is touched: bad inputs change nothing there."""

    metrics: dict
    cam: dict
    data_report: dict
    lineage: dict[str, str]
    card: str
    #: (dataset, context) pairs: the raw data at its DVC version and the manifest's splits.
    datasets: list


def _read_inputs(settings: Settings, paths: ResolvedPaths) -> _Inputs:
    """The test and Grad-CAM metrics, the data report, the lineage and the model card; errors name the file."""
    from cxr.model.inference import load_checkpoint

    root = paths.root
    for path, step in (
        (paths.metrics_full, "evaluate"),
        (paths.calibration, "evaluate"),
        (paths.best_checkpoint, "train"),
    ):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; run the {step} step first")
    metrics = read_json(paths.metrics_full)
    cam = read_json(paths.cam_metrics_full, {})
    commit, dirty = git_commit(root, paths)
    lineage = {
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "data_version": data_version(root) or "unknown",
        "dvc_lock_sha256": file_hash(root / "dvc.lock") or "none",
        "params_hash": settings.fingerprint(),
        "inputs_hash": inputs_hash(settings, root),
        "data_source": settings.download.source,
    }
    meta = {k: v for k, v in load_checkpoint(paths.best_checkpoint).items() if k != "model"}
    data_report = read_json(paths.data_report, {})
    card = model_card(settings, meta, metrics, cam, lineage, data_report)
    return _Inputs(metrics, cam, data_report, lineage, card, pipeline_datasets(paths))


def _log_run(settings: Settings, paths: ResolvedPaths, inputs: _Inputs, params_file: Path | None):
    """Into the active MLflow run: params, per-epoch and test metrics, figures, lineage files, the card and the
    servable model; returns the logged model's info."""
    import mlflow

    from cxr.ops.tracking import flat_metrics
    from cxr.serving.pyfunc import log_pyfunc

    mlflow.set_tag("registration", "new version")
    mlflow.set_tags(inputs.lineage)
    log_datasets(mlflow.MlflowClient(), mlflow.active_run().info.run_id, inputs.datasets)
    mlflow.log_params(
        {
            k: json.dumps(v) if isinstance(v, (list, dict)) else v
            for k, v in flatten(settings.model_dump(mode="json")).items()
        }
    )
    if paths.history.is_file():
        for row in read_csv(paths.history):
            step = int(row.pop("epoch"))
            mlflow.log_metrics({f"epoch/{k}": float(v) for k, v in row.items() if v != ""}, step=step)
    mlflow.log_metrics(flat_metrics(inputs.metrics, "test/"))
    # Files left out under download.policy 'skip' (listed in pipeline/report.json and the model card).
    mlflow.log_metric("data/skipped_files", len(inputs.data_report.get("skipped") or []))
    mlflow.log_metrics(
        {
            f"cam/{k}": float(v)
            for k, v in flatten(inputs.cam).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    )
    mlflow.log_artifacts(str(paths.eval_reports), "evaluation")
    if paths.gradcam_reports.is_dir():
        mlflow.log_artifacts(str(paths.gradcam_reports), "gradcam")
    # The manifest lets the promotion gate (cxr.registry.gate) map predictions to image hashes later.
    for extra in (
        paths.data_report,
        paths.manifest,
        paths.history,
        params_file or paths.root / "params.yaml",
        paths.root / "dvc.lock",
    ):
        if extra.is_file():
            mlflow.log_artifact(str(extra), "pipeline")
    mlflow.log_text(inputs.card, "model_card.md")
    return log_pyfunc(
        paths.best_checkpoint,
        paths.calibration,
        name="model",
        batch_size=settings.evaluate.batch_size,
        max_pixels=settings.download.max_pixels,
        data_source=settings.download.source,
    )


def _logged_run(settings: Settings, paths: ResolvedPaths, inputs: _Inputs, params_file, exp_id: str, uri: str):
    """:func:`_log_run` in a new run; returns the logged model's info and the run.

    A failure to store the run's files (the server's artifact store down or refusing) raises
    :class:`ArtifactStoreUnavailable` naming the server and the run, which ends FAILED with no version made
    from it: a retry logs a new run.
    """
    import mlflow
    import requests
    from mlflow.exceptions import MlflowException

    where, run_id = "a new run", None
    try:
        with mlflow.start_run(experiment_id=exp_id, run_name=f"pipeline-{inputs.lineage['git_commit'][:8]}") as run:
            where, run_id = f"run {run.info.run_id} (artifact root {run.info.artifact_uri})", run.info.run_id
            return _log_run(settings, paths, inputs, params_file), run
    except (MlflowException, requests.RequestException) as err:
        if run_id is not None:
            _mark_failed(run_id)
        if not uri.startswith(("http://", "https://")):
            raise
        reason = " ".join(str(err).split())[:700]
        raise ArtifactStoreUnavailable(
            f"MLflow tracking server {uri} could not store the files of {where}; its artifact store "
            f"(--artifacts-destination) may be down or refusing, its log says which: {reason}; no model version "
            "was registered (the run is marked FAILED; the next registration logs a new one)"
        ) from err


def _mark_failed(run_id: str) -> None:
    """End a run that a failed upload left RUNNING as FAILED (the context manager does not always get to)."""
    import mlflow

    try:
        if mlflow.active_run() is not None and mlflow.active_run().info.run_id == run_id:
            mlflow.end_run("FAILED")
        client = mlflow.MlflowClient()
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "FAILED")
    except Exception:  # noqa: BLE001 - the upload's error is the one to report
        log.warning("run %s could not be marked FAILED", run_id, exc_info=True)


def _link_training(client, exp_id: str, run_id: str, paths: ResolvedPaths, inputs: _Inputs) -> str | None:
    """Nest the live training run under the pipeline run; a failure is logged, not raised (the run is complete)."""
    try:
        return link_training_run(client, exp_id, run_id, paths.best_checkpoint, inputs.datasets)
    except Exception:  # noqa: BLE001 - the version exists; failing now would make a retry register another
        log.exception("the live training run could not be linked to run %s", run_id)
        return None


def _record_unchanged(client, exp_id: str, uri: str, paths: ResolvedPaths, inputs: _Inputs, same) -> RegisterResult:
    """A short run that says the inputs equal those of version ``same``, and points to it; nothing registered."""
    import mlflow

    lineage, name = inputs.lineage, same.name
    # The run is still recorded, so a schedule's history shows it ran and found nothing new.
    with mlflow.start_run(experiment_id=exp_id, run_name=f"unchanged-{lineage['git_commit'][:8]}") as run:
        mlflow.set_tags(
            {
                **lineage,
                "registration": "unchanged",
                "same_as_version": str(same.version),
                "same_as_run_id": same.run_id or "",
            }
        )
        log_datasets(client, run.info.run_id, inputs.datasets)
    log.info(
        "inputs %s equal those of %s version %s: nothing registered (MLflow run %s)",
        lineage["inputs_hash"],
        name,
        same.version,
        run.info.run_id,
    )
    train_id = _link_training(client, exp_id, run.info.run_id, paths, inputs)
    return RegisterResult(run.info.run_id, name, str(same.version), uri, False, train_id)


def register(
    settings: Settings, paths: ResolvedPaths, params_file: Path | None = None, force: bool = False
) -> RegisterResult:
    """Log the pipeline's outputs to one MLflow run and register the servable model as a new version.

    When a version made from the same data, params and code exists, a short run records that and points to it,
    and nothing is registered (``force`` registers anyway). ``params_file`` is the file the settings were read
    from (logged with the run); default ``params.yaml`` at the root. The live run of the training (``cxr train``)
    is nested under the run.
    """
    import mlflow

    name, uri = settings.base.model_name, tracking_uri(paths.root)
    check_tracking(uri)
    inputs = _read_inputs(settings, paths)
    lineage = inputs.lineage
    mlflow.set_tracking_uri(uri)
    exp_id = ensure_experiment(mlflow, settings.base.experiment, paths.root, uri)
    client = mlflow.MlflowClient()
    same = None if force else find_version_by_inputs(client, name, lineage["inputs_hash"])
    if same is not None:
        return _record_unchanged(client, exp_id, uri, paths, inputs, same)
    info, run = _logged_run(settings, paths, inputs, params_file, exp_id, uri)
    # The version is created only once the run has finished with every artifact in place.
    run_id = run.info.run_id
    tags = {**lineage, "mlflow_run_id": run_id, **metric_tags(inputs.metrics, settings.evaluate.positive_class)}
    mv = _create_version(
        client, name, info.model_uri, run_id, info.model_id, tags, version_description(inputs.card, run_id)
    )
    log.info("MLflow run %s; registered %s version %s", run_id, name, mv.version)
    _log_registered_report(client, settings, paths, run_id, str(mv.version))
    train_id = _link_training(client, exp_id, run_id, paths, inputs)
    return RegisterResult(run_id, name, str(mv.version), uri, train_run_id=train_id)
