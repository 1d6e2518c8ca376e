"""The train step's live MLflow run: each epoch's scores as the epoch ends, so the MLflow UI shows a training
while it runs.

Best-effort: an unreachable tracking server, or one that goes away, costs a warning, never the training. Nothing
of it is written into an output, so DVC's outputs stay byte-reproducible. The run is tagged with the sha256 of
the checkpoint it produced (``CHECKPOINT_TAG``); the register step finds it by that tag and nests it under the
pipeline run (``cxr.registry.provenance``). The training code itself never imports MLflow: ``cxr train`` passes
``LiveRun.log_epoch`` as the loop's ``on_epoch``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr.core.io import read_csv
from cxr.ops.tracking import check_tracking, ensure_experiment, tracking_uri

if TYPE_CHECKING:
    from cxr.core.config import Settings

log = logging.getLogger(__name__)

#: The tag that says what a run of the project's experiment records (``drift``, ``sweep``, ``train``).
KIND_TAG = "cxr.kind"
TRAIN_KIND = "train"
#: sha256 of the checkpoint a finished training run produced: how the register step finds the run.
CHECKPOINT_TAG = "cxr.checkpoint_sha256"
#: Per-epoch metric names, shared with the pipeline run (``epoch/val_loss``, ...), so the two plot alike.
EPOCH_PREFIX = "epoch/"

#: For the live run only: a tracking server gone mid-training costs seconds per call, not MLflow's minutes of
#: retries. Set when not set already; the register step runs in another process with MLflow's defaults.
_HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def checkpoint_digest(path: Path) -> str | None:
    """sha256 of a checkpoint file, or None when it does not exist."""
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _flat_params(section: Mapping[str, Any], prefix: str) -> dict[str, str]:
    """``{"train.lr": "0.0005", "train.augment.rotate": "10", ...}``: the names the pipeline run logs."""
    out: dict[str, str] = {}
    for key, value in section.items():
        if isinstance(value, Mapping):
            out.update(_flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else str(value)
    return out


def _metrics(row: Mapping[str, Any], prefix: str, step: int = 0) -> list:
    """MLflow metric entities for the finite numbers of ``row``."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    out = []
    for key, value in row.items():
        try:
            v = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            out.append(Metric(f"{prefix}{key}", v, now, step))
    return out


class LiveRun:
    """One MLflow run, written best-effort: the first failed call logs a warning and turns the rest into no-ops.

    ``LiveRun(None)`` does nothing: no tracking, another DDP rank, or a server that did not answer at the start.
    """

    def __init__(self, client, run_id: str | None = None) -> None:
        self.client = client if run_id else None
        self.run_id = run_id
        self.logged: set[int] = set()

    @property
    def active(self) -> bool:
        """Whether calls still reach MLflow."""
        return self.client is not None

    def _call(self, what: str, call: Callable[[], object]) -> bool:
        """Run ``call`` (MLflow calls); on any error, warn once and stop tracking."""
        if self.client is None:
            return False
        try:
            call()
            return True
        except Exception as err:  # noqa: BLE001 - live tracking never stops a training
            log.warning(
                "MLflow run %s: %s failed (%s); training goes on without live tracking, the register step "
                "logs the whole history",
                self.run_id,
                what,
                err,
            )
            self.client = None
            return False

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        """The training loop's ``on_epoch``: one history row as ``epoch/<name>`` metrics at step ``epoch``."""

        def log() -> None:
            step = int(row["epoch"])
            values = {k: v for k, v in row.items() if k != "epoch"}
            self.client.log_batch(self.run_id, metrics=_metrics(values, EPOCH_PREFIX, step))
            self.logged.add(step)

        self._call(f"logging epoch {row.get('epoch')}", log)

    def record_result(self, history: Path, checkpoint: Path, summary: Mapping[str, Any]) -> None:
        """After training: the epochs not logged live (a resumed run's earlier ones), the summary as ``train/*``
        metrics, and the checkpoint's sha256, by which the register step finds this run."""

        def record() -> None:
            for row in read_csv(history) if history.is_file() else []:
                if int(row["epoch"]) not in self.logged:
                    self.log_epoch(row)
            if self.client is None:  # a backfilled epoch failed, and said so
                return
            self.client.log_batch(self.run_id, metrics=_metrics(summary, "train/"))
            digest = checkpoint_digest(checkpoint)
            if digest is not None:
                self.client.set_tag(self.run_id, CHECKPOINT_TAG, digest)

        self._call("recording the result", record)

    def end(self, status: str) -> None:
        """Close the run as FINISHED, FAILED or KILLED."""
        self._call(f"ending the run as {status}", lambda: self.client.set_terminated(self.run_id, status))


def _context_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """``tags`` with the ones ``mlflow.start_run`` adds (user, source, git commit)."""
    try:
        from mlflow.tracking.context.registry import resolve_tags
    except ImportError:  # an MLflow that moved it: the run just lacks those tags
        return dict(tags)
    return resolve_tags(dict(tags))


def start_live_run(
    uri: str, root: Path, experiment: str, params: Mapping[str, Any], tags: Mapping[str, str]
) -> LiveRun:
    """A new run tagged ``cxr.kind=train`` in ``experiment``, with ``params`` (nested sections, flattened).

    A DDP rank other than 0, or a tracking store that does not answer, gives a ``LiveRun`` that does nothing.
    """
    if os.environ.get("RANK", "0") != "0":
        return LiveRun(None)
    for key, value in _HTTP_LIMITS.items():
        os.environ.setdefault(key, value)
    try:
        check_tracking(uri, timeout_s=5.0)
        import mlflow
        from mlflow.entities import Param

        mlflow.set_tracking_uri(uri)
        exp_id = ensure_experiment(mlflow, experiment, root, uri)
        client = mlflow.MlflowClient(uri)
        all_tags = _context_tags({**tags, KIND_TAG: TRAIN_KIND})
        commit = all_tags.get("mlflow.source.git.commit", "")[:8]
        run = client.create_run(exp_id, run_name=f"train-{commit}" if commit else "train", tags=all_tags)
        run_id = run.info.run_id
        client.log_batch(run_id, params=[Param(k, v) for k, v in _flat_params(params, "").items()])
    except Exception as err:  # noqa: BLE001 - live tracking never stops a training
        log.warning("no live MLflow run for this training (%s); the register step still logs its history", err)
        return LiveRun(None)
    log.info("MLflow run %s (experiment %s) follows this training live", run_id, experiment)
    return LiveRun(client, run_id)


def run_details(settings: Settings, resume: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """The live run's params (the seed, the classes, the train section) and tags (the params hash, as on the
    pipeline run; whether it resumes; the DVC experiment it belongs to, when it does)."""
    tags = {"params_hash": settings.fingerprint(), "cxr.resume": str(resume).lower()}
    if os.environ.get("DVC_EXP_NAME"):  # set by `dvc exp run`: `cxr sweep` logs the experiment under this name
        tags["cxr.dvc_exp"] = os.environ["DVC_EXP_NAME"]
    base = {"seed": settings.base.seed, "classes": settings.base.classes}
    return {"base": base, "train": settings.train.model_dump(mode="json")}, tags


@contextmanager
def live_training(settings: Settings, root: Path, resume: bool, track: bool = True) -> Iterator[LiveRun]:
    """The training's live run in the project's experiment (``track`` False: one that does nothing), ended
    FINISHED when the block completes, KILLED on Ctrl-C, FAILED on any other error."""
    if not track:
        yield LiveRun(None)
        return
    params, tags = run_details(settings, resume)
    run = start_live_run(tracking_uri(root), root, settings.base.experiment, params, tags)
    try:
        yield run
    except KeyboardInterrupt:
        run.end("KILLED")
        raise
    except BaseException:
        run.end("FAILED")
        raise
    run.end("FINISHED")
