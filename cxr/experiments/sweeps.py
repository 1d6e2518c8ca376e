"""DVC experiments (``dvc exp run -S``, queued grids) mirrored into MLflow, and a readable ``dvc exp show``.

DVC runs the sweep: each experiment is the whole ``dvc.yaml`` pipeline with some params set, committed to a
hidden Git ref. :func:`log_sweep` then records each experiment as an MLflow run nested under one parent run
per sweep (its params, per-epoch history, training and test metrics, and the DVC names that find it again),
so a sweep can be compared in the MLflow UI as well as with ``dvc exp show``. Logging is idempotent: an
experiment already logged (by commit) is skipped.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr.core.config import Settings
from cxr.evaluation.headline import as_full

log = logging.getLogger(__name__)

#: Columns ``dvc exp show`` keeps besides the changed params: the run's state and the headline metrics.
HEADLINE_COLUMNS: tuple[str, ...] = (
    "Experiment",
    "Created",
    "State",
    "val_loss",
    "val_acc",
    "acc",
    "auc",
    "f1",
)
#: Param sections a sweep may change (their changed keys stay in the table with ``--only-changed``).
PARAM_SECTIONS: tuple[str, ...] = ("base", "download", "split", "train", "evaluate", "gradcam")
#: ``--drop`` pattern: every column that is neither a headline nor a param of the sections above.
SHOW_DROP = f"^(?!({'|'.join(HEADLINE_COLUMNS)})$)(?!({'|'.join(PARAM_SECTIONS)})\\.).*"
_QUEUED = re.compile(r"Queued experiment '([^']+)'")
_POLL_S = 5.0


def show_args(markdown: bool = False) -> list[str]:
    """Arguments of ``dvc exp show`` for the readable table: headline metrics and the params that differ."""
    return ["exp", "show", "--only-changed", "--drop", SHOW_DROP, *(["--md"] if markdown else [])]


@dataclass(frozen=True)
class Experiment:
    """One DVC experiment: its name, commit, baseline commit, params and metrics files' contents."""

    name: str
    rev: str
    baseline: str
    state: str
    params: dict[str, Any]
    metrics: dict[str, dict[str, Any]]


def _dvc(root: Path, *args: str) -> str:
    from cxr.ops.dvc import run_dvc

    return run_dvc(list(args), root)


def list_experiments(root: Path) -> list[Experiment]:
    """The experiments of the current baseline commit, as ``dvc exp show --json`` reports them."""
    rows = json.loads(_dvc(root, "exp", "show", "--json", "--no-pager") or "[]")
    found = []
    for baseline in rows:
        if baseline.get("rev") == "workspace":
            continue
        for exp in baseline.get("experiments") or []:
            executor = exp.get("executor") or {}
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
                metrics = {f: (v or {}).get("data") or {} for f, v in (data.get("metrics") or {}).items()}
                found.append(
                    Experiment(
                        rev.get("name") or rev["rev"][:7],
                        rev["rev"],
                        baseline["rev"],
                        str(executor.get("state") or "success"),
                        params,
                        metrics,
                    )
                )
    return found


def _metric_files(exp: Experiment, paths) -> list[tuple[str, dict]]:
    """(MLflow key prefix, figures) of an experiment's metrics files: the headline folder's files under ``test/``
    with the full names the pipeline's runs log (``test/accuracy``, ``test/COVID/sensitivity``), ``train/``."""
    root = paths.root
    headline, train = paths.metrics.relative_to(root).as_posix(), paths.train_metrics.relative_to(root).as_posix()
    out = []
    for file, figures in exp.metrics.items():
        if file == train:
            out.append(("train/", figures))
        elif file.startswith(headline + "/"):
            out.append(("test/", as_full(Path(file).stem, figures)))
    return out


def git_file(root: Path, rev: str, path: str) -> str | None:
    """A file's text at commit ``rev`` (an experiment's commit), or None when it is not there."""
    proc = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def queue(root: Path, set_params: Sequence[str]) -> list[str]:
    """Queue one DVC experiment per point of the grid(s) given as ``-S`` values; returns their names."""
    args = ["exp", "run", "--queue"]
    for s in set_params:
        args += ["-S", s]
    names = _QUEUED.findall(_dvc(root, *args))
    if not names:
        raise RuntimeError(f"`dvc {' '.join(args)}` queued nothing")
    return names


def run_queue(root: Path, names: Sequence[str], jobs: int = 1, timeout_s: float | None = None) -> dict[str, str]:
    """Start ``jobs`` queue workers and wait until the named experiments finished; returns name -> final status."""
    from cxr.ops.dvc import dvc_env

    # The workers outlive `dvc queue start` and keep its output open: detach them from ours.
    subprocess.run(
        [sys.executable, "-m", "dvc", "queue", "start", "-j", str(jobs)],
        cwd=root,
        env=dvc_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        check=True,
    )
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    wanted = set(names)
    while True:
        status = queue_status(root)
        pending = {n for n in wanted if status.get(n) in (None, "Queued", "Running")}
        if not pending:
            return {n: status[n] for n in names}
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"experiments still running after {timeout_s:.0f} s: {sorted(pending)}")
        time.sleep(_POLL_S)


def queue_status(root: Path) -> dict[str, str]:
    """Experiment name -> status (Queued, Running, Success, Failed) from ``dvc queue status``."""
    out = _dvc(root, "queue", "status")
    status = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] != "Task" and re.fullmatch(r"[0-9a-f]{7,}", parts[0]):
            status[parts[1]] = parts[-1]
    return status


def _history(root: Path, exp: Experiment, settings: Settings) -> list[dict[str, str]]:
    text = git_file(root, exp.rev, settings.paths(root).history.relative_to(root).as_posix())
    return list(csv.DictReader(io.StringIO(text))) if text else []


def log_sweep(
    root: Path, settings: Settings, uri: str, sweep: str, names: Sequence[str] | None = None
) -> tuple[str, list[str]]:
    """Log the experiments (all of the current baseline, or ``names``) as MLflow runs nested under the sweep's run.

    Returns (parent run id, ids of the runs logged now); experiments already logged are skipped.
    """
    import mlflow

    from cxr.ops.lineage import flatten
    from cxr.ops.tracking import check_tracking, ensure_experiment, flat_metrics

    check_tracking(uri)
    exps = [e for e in list_experiments(root) if names is None or e.name in names]
    if names is not None and (missing := set(names) - {e.name for e in exps}):
        raise ValueError(f"no DVC experiment named {sorted(missing)} in {root}")
    mlflow.set_tracking_uri(uri)
    exp_id = ensure_experiment(mlflow, settings.base.experiment, root, uri)
    client = mlflow.MlflowClient(uri)
    parents = client.search_runs([exp_id], f"tags.`cxr.sweep` = '{sweep}' and tags.`cxr.kind` = 'sweep'")
    logged_now: list[str] = []
    with (
        mlflow.start_run(run_id=parents[0].info.run_id)
        if parents
        else mlflow.start_run(experiment_id=exp_id, run_name=sweep) as parent
    ):
        mlflow.set_tags({"cxr.kind": "sweep", "cxr.sweep": sweep})
        for e in exps:
            if e.state.lower() not in ("success", ""):
                log.warning("experiment %s ended %s; not logged", e.name, e.state)
                continue
            done = client.search_runs([exp_id], f"tags.`dvc.exp_rev` = '{e.rev}'")
            if done:
                log.info("experiment %s already logged as run %s", e.name, done[0].info.run_id)
                continue
            with mlflow.start_run(experiment_id=exp_id, run_name=e.name, nested=True) as child:
                mlflow.set_tags(
                    {
                        "cxr.kind": "dvc-experiment",
                        "cxr.sweep": sweep,
                        "dvc.exp_name": e.name,
                        "dvc.exp_rev": e.rev,
                        "dvc.baseline": e.baseline,
                    }
                )
                mlflow.log_params(
                    {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in flatten(e.params).items()}
                )
                for row in _history(root, e, settings):
                    step = int(row.pop("epoch"))
                    mlflow.log_metrics(
                        {f"epoch/{k}": float(v) for k, v in row.items() if v not in ("", None)}, step=step
                    )
                for prefix, figures in _metric_files(e, settings.paths(root)):
                    mlflow.log_metrics(flat_metrics(figures, prefix))
                logged_now.append(child.info.run_id)
    log.info("sweep %s: %d experiments logged to MLflow (parent run %s)", sweep, len(logged_now), parent.info.run_id)
    return parent.info.run_id, logged_now
