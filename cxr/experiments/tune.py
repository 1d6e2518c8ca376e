"""``cxr tune``: an Optuna search over the ``tune.space`` of params.yaml, scored on the validation split only.

Each trial trains through :func:`cxr.training.loop.train` (the pipeline's one training implementation) into its own
folder under ``base.paths.tune``; the split manifest, the raw data and the decoded cache are shared. Trials
report their validation objective after every epoch, and the median pruner stops those doing worse than the
median of earlier trials at the same epoch. The test split is never decoded or read. Every trial is an
MLflow run nested under one parent run per study. The best values are written as a params file
(``best_params.yaml``) and as the ``dvc exp run -S`` arguments that apply them.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cxr.core.config import Settings
from cxr.core.io import write_csv, write_text
from cxr.core.paths import ResolvedPaths
from cxr.core.search import Range
from cxr.core.sections import Train

log = logging.getLogger(__name__)

BEST_PARAMS_FILE = "best_params.yaml"
TRIALS_FILE = "trials.csv"


@dataclass(frozen=True)
class TuneResult:
    """The finished study: its best values and where they were written."""

    study_name: str
    best_value: float
    best_params: dict[str, Any]
    trials: int
    pruned: int
    params_file: Path
    parent_run_id: str

    def dvc_args(self) -> list[str]:
        """``-S key=value`` arguments of ``dvc exp run`` that apply the best values."""
        return [a for k, v in self.best_params.items() for a in ("-S", f"{k}={json.dumps(v)}")]


def direction(objective: str) -> str:
    """``minimize`` for the validation loss, ``maximize`` for accuracy and F1."""
    return "minimize" if objective == "val_loss" else "maximize"


def suggest(trial: Any, space: dict[str, Range]) -> dict[str, Any]:
    """One value per searched key, from the trial's sampler."""
    values: dict[str, Any] = {}
    for key, rng in space.items():
        if rng.choices is not None:
            values[key] = trial.suggest_categorical(key, rng.choices)
        elif rng.integer:
            values[key] = trial.suggest_int(key, int(rng.low), int(rng.high), log=rng.log)
        else:
            values[key] = trial.suggest_float(key, float(rng.low), float(rng.high), log=rng.log)
    return values


def apply(cfg: Train, values: dict[str, Any]) -> Train:
    """``cfg`` with dotted ``train.*`` values set, validated like params.yaml."""
    data = cfg.model_dump()
    for key, value in values.items():
        node = data
        parts = key.split(".")[1:]
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    return Train.model_validate(data)


def nested(values: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys to the nested mapping of a params file."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _trial_paths(paths: ResolvedPaths, number: int) -> ResolvedPaths:
    folder = paths.tune / f"trial-{number:03d}"
    return paths.model_copy(update={"model_dir": folder, "train_reports": folder})


def _objective(
    settings: Settings, paths: ResolvedPaths, base_train: Train, study_name: str, exp_id: str
) -> Callable[[Any], float]:
    """One trial: train on sampled values in a nested MLflow run, reporting each epoch's score to the pruner."""
    import mlflow
    import optuna

    from cxr.training.loop import train

    cfg = settings.tune
    better = min if direction(cfg.objective) == "minimize" else max

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, cfg.space)
        train_cfg = apply(base_train, values)
        scores: list[float] = []
        with mlflow.start_run(experiment_id=exp_id, run_name=f"{study_name}-trial-{trial.number}", nested=True):
            mlflow.set_tags({"cxr.kind": "tune-trial", "optuna.study": study_name, "optuna.trial": str(trial.number)})
            mlflow.log_params({**values, "train.epochs": train_cfg.epochs})

            def on_epoch(row: dict) -> None:
                step = int(row["epoch"])
                mlflow.log_metrics({f"epoch/{k}": float(v) for k, v in row.items() if k != "epoch"}, step=step)
                scores.append(float(row[cfg.objective]))
                trial.report(scores[-1], step)
                if trial.should_prune():
                    mlflow.set_tag("optuna.state", "pruned")
                    raise optuna.TrialPruned(f"pruned after epoch {step}: {cfg.objective}={scores[-1]:.4f}")

            try:
                train(train_cfg, settings.base, _trial_paths(paths, trial.number), resume=False, on_epoch=on_epoch)
            except optuna.TrialPruned as exc:
                pruned = exc  # re-raised once the trial's run has closed as finished, not failed
            else:
                pruned = None
                mlflow.log_metric(f"best_{cfg.objective}", better(scores))
                mlflow.set_tag("optuna.state", "complete")
        if pruned is not None:
            raise pruned
        return better(scores)

    return objective


def tune(
    settings: Settings, paths: ResolvedPaths, uri: str, trials: int | None = None, study_name: str | None = None
) -> TuneResult:
    """Run the study, track it in MLflow, write ``best_params.yaml``; the test split is never read."""
    import mlflow
    import optuna

    from cxr.core.io import write_json
    from cxr.data.manifest import read_manifest
    from cxr.ops.tracking import check_tracking, ensure_experiment

    cfg = settings.tune
    if not cfg.space:
        raise ValueError("tune.space is empty: declare the train.* settings to search in params.yaml")
    read_manifest(paths.manifest)  # fail now, not in the first trial, when the split has not run
    n_trials = trials or cfg.trials
    base_train = settings.train if cfg.epochs is None else settings.train.model_copy(update={"epochs": cfg.epochs})
    study_name = study_name or f"tune-{settings.fingerprint('base', 'train', 'tune')[:8]}"
    goal = direction(cfg.objective)
    check_tracking(uri)
    mlflow.set_tracking_uri(uri)
    exp_id = ensure_experiment(mlflow, settings.base.experiment, paths.root, uri)
    if paths.tune.exists():
        shutil.rmtree(paths.tune)  # trials of an earlier study; their runs stay in MLflow
    paths.tune.mkdir(parents=True)

    objective = _objective(settings, paths, base_train, study_name, exp_id)
    sampler = optuna.samplers.TPESampler(seed=settings.base.seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=cfg.prune_after_trials, n_warmup_steps=cfg.prune_after_epochs)
    study = optuna.create_study(study_name=study_name, direction=goal, sampler=sampler, pruner=pruner)
    space = json.dumps({k: v.model_dump(exclude_none=True) for k, v in cfg.space.items()})
    with mlflow.start_run(experiment_id=exp_id, run_name=study_name) as parent:
        mlflow.set_tags({"cxr.kind": "tune", "optuna.study": study_name, "optuna.objective": cfg.objective})
        mlflow.log_params({"tune.trials": n_trials, "tune.objective": cfg.objective, "tune.space": space})
        # Bad settings or a broken input are errors of the whole study, not a failed trial to skip.
        study.optimize(objective, n_trials=n_trials, timeout=cfg.timeout_s, catch=())
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        pruned = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))
        if not complete:
            raise RuntimeError(f"study {study_name}: no trial completed ({len(pruned)} pruned)")
        best = study.best_trial
        mlflow.log_metric(f"best_{cfg.objective}", best.value)
        mlflow.log_params({f"best.{k}": v for k, v in best.params.items()})
        result = TuneResult(
            study_name,
            float(best.value),
            dict(best.params),
            len(study.trials),
            len(pruned),
            paths.tune / BEST_PARAMS_FILE,
            parent.info.run_id,
        )
        _write_outputs(result, study, cfg.objective)
        mlflow.log_artifact(str(result.params_file), "tune")
        mlflow.log_artifact(str(paths.tune / TRIALS_FILE), "tune")
    write_json(
        paths.tune / "study.json",
        {
            "study": study_name,
            "objective": cfg.objective,
            "direction": goal,
            "best_value": result.best_value,
            "best_params": result.best_params,
            "trials": result.trials,
            "pruned": result.pruned,
            "mlflow_parent_run_id": result.parent_run_id,
        },
    )
    log.info("study %s: best %s=%.4f with %s", study_name, cfg.objective, result.best_value, result.best_params)
    return result


def _write_outputs(result: TuneResult, study: Any, objective: str) -> None:
    """``best_params.yaml`` (merge into params.yaml, or apply with the dvc command in its header) and ``trials.csv``."""
    header = (
        f"# Best of {result.trials} trials of study {result.study_name}: {objective} = {result.best_value:.6g}\n"
        f"# (validation split; MLflow parent run {result.parent_run_id}). Apply as a DVC experiment:\n"
        f"#   dvc exp run {shlex.join(result.dvc_args())}\n"
        "# or merge these keys into params.yaml.\n"
    )
    write_text(result.params_file, header + yaml.safe_dump(nested(result.best_params), sort_keys=False))
    keys = sorted({k for t in study.trials for k in t.params})
    columns = ["number", "state", objective, *keys]
    write_csv(
        result.params_file.parent / TRIALS_FILE,
        columns,
        (
            dict(
                zip(
                    columns,
                    [
                        t.number,
                        t.state.name,
                        "" if t.value is None else f"{t.value:.6g}",
                        *(t.params.get(k, "") for k in keys),
                    ],
                    strict=True,
                )
            )
            for t in study.trials
        ),
    )
