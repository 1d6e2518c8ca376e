"""Hyperparameter search: `cxr tune` on the validation split, a queued DVC grid mirrored into MLflow, and an
experiment applied (and the baseline restored) leaving nothing to rerun."""

from __future__ import annotations

import csv
import difflib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, make_project, tiny_params

from cxr.core.config import load_settings
from cxr.core.paths import CACHE_DIR_ENV
from cxr.ops.dvc import dvc_env, run_dvc

pytestmark = pytest.mark.slow

SPACE = {"train.lr": {"low": 0.0005, "high": 0.005, "log": True}, "train.batch_size": {"choices": [8, 16]}}


def _cxr(root: Path, *args: str, env: dict | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "cxr", *args], cwd=root, capture_output=True, text=True, env={**dvc_env(), **(env or {})}
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def committed(module_tmp: Path) -> Path:
    """A tiny project whose data is generated, versioned and committed (queued experiments start from a commit).

    Built once, with the download step in-process (its command is tested elsewhere); each test works on a copy.
    """
    from cxr.data.download import download

    params = tiny_params(
        train={"epochs": 1},
        evaluate={"n_boot": 20},
        gradcam={"per_class": 1},
        tune={"trials": 2, "epochs": 2, "prune_after_trials": 1},
    )
    params["tune"]["space"] = SPACE
    root = make_project(module_tmp / "p", params)
    shutil.copy(REPO / ".gitignore", root / ".gitignore")  # keeps last.pt and the decoded cache out of commits
    s = load_settings(root / "params.yaml")
    download(s.base, s.download, s.paths(root))
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    subprocess.run(["git", "add", "-A"], cwd=root, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "data"], cwd=root, check=True, env=env)
    return root


def _project(committed: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(committed, tmp_path / "p", symlinks=True))


def _git(root: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    subprocess.run(["git", *args], cwd=root, check=True, env={**env, "GIT_COMMITTER_EMAIL": "t@t"})


def _replace(dst: dict, src: dict) -> None:
    """Make the round-trip mapping ``dst`` equal ``src`` in place, so that its layout and comments stay."""
    for key in [k for k in dst if k not in src]:
        del dst[key]
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _replace(dst[key], value)
        elif dst.get(key) != value:
            dst[key] = value


def _real_layout(root: Path) -> str:
    """The project's params.yaml as a user has it (its comments and layout), holding the tiny project's values."""
    from dvc.utils.serialize import modify_yaml

    path = root / "params.yaml"
    values = yaml.safe_load(path.read_text())
    path.write_text((REPO / "params.yaml").read_text())
    with modify_yaml(path) as data:
        _replace(data, values)
    assert yaml.safe_load(path.read_text()) == values
    return path.read_text()


def test_tune_two_trials_on_validation_only(committed: Path, tmp_path: Path, monkeypatch) -> None:
    import mlflow

    from cxr.data.split import split
    from cxr.experiments.tune import tune

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = _project(committed, tmp_path)
    settings = load_settings(root / "params.yaml")
    paths = settings.paths(root)
    split(settings.base, settings.split, paths)
    # The test split points at files that do not exist: a search that touched it would fail.
    rows = list(csv.DictReader(paths.manifest.open()))
    for r in rows:
        if r["split"] == "test":
            r["path"] = f"missing/{r['path']}"
    no_test = tmp_path / "manifest-no-test.csv"
    with no_test.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    result = tune(settings, paths.model_copy(update={"manifest": no_test}), uri)

    assert result.trials == 2
    assert set(result.best_params) == set(SPACE)
    assert 0.0005 <= result.best_params["train.lr"] <= 0.005 and result.best_params["train.batch_size"] in (8, 16)
    best = yaml.safe_load(result.params_file.read_text())
    assert best["train"]["lr"] == result.best_params["train.lr"]
    assert "dvc exp run -S" in result.params_file.read_text()
    # The best file applies: merged into params.yaml it still validates.
    merged = yaml.safe_load((root / "params.yaml").read_text())
    merged["train"].update(best["train"])
    (tmp_path / "applied.yaml").write_text(yaml.safe_dump(merged))
    assert load_settings(tmp_path / "applied.yaml").train.lr == result.best_params["train.lr"]

    client = mlflow.MlflowClient(uri)
    children = client.search_runs(
        [client.get_run(result.parent_run_id).info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'",
    )
    assert len(children) == 2
    for child in children:
        assert "train.lr" in child.data.params
        assert [m.step for m in client.get_metric_history(child.info.run_id, "epoch/val_loss")][:1] == [1]


def test_queued_grid_runs_and_is_logged_to_mlflow(committed: Path, tmp_path: Path, monkeypatch) -> None:
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = _project(committed, tmp_path)
    shared = tmp_path / "shared-cache"
    out = _cxr(
        root, "sweep", "-S", "train.lr=0.001,0.003", "--name", "lr-grid", "-j", "1", env={CACHE_DIR_ENV: str(shared)}
    )
    assert "queued 2 experiments" in out and "MLflow: 2 runs logged under lr-grid" in out
    # Both queued runs (in their own temporary copies of the project) used the one shared decoded cache.
    assert list(shared.glob("*.npy"))

    table = _cxr(root, "exp-show", "--md")
    assert "train.lr" in table and "acc" in table and "val_loss" in table
    assert "0.001" in table and "0.003" in table
    assert "per_class" not in table and "counts." not in table  # only headline metrics

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    [parent] = client.search_runs(["1"], "tags.`cxr.kind` = 'sweep'")
    children = client.search_runs(["1"], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(c.data.params["train.lr"] for c in children) == ["0.001", "0.003"]
    assert all("test/accuracy" in c.data.metrics and "epoch/val_loss" in c.data.metrics for c in children)
    # Logging again adds nothing.
    assert "MLflow: 0 runs logged" in _cxr(root, "sweep", "--log-only", "--name", "lr-grid")


def test_an_applied_experiment_and_the_baseline_leave_nothing_to_rerun(committed: Path, tmp_path: Path) -> None:
    """`dvc exp run -S` edits one line of params.yaml; after `dvc exp apply` (or a return to the baseline)
    `dvc status` is clean and `dvc repro` reruns nothing: the training's resume point, which DVC does not track,
    is not taken for a changed output."""
    root = _project(committed, tmp_path)
    baseline = _real_layout(root)
    run_dvc(["repro"], root)
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "baseline")

    run_dvc(["exp", "run", "-S", "train.lr=0.001", "-n", "lr-high"], root)
    experiment = (root / "params.yaml").read_text()
    changed = [d for d in difflib.ndiff(baseline.splitlines(), experiment.splitlines()) if d[:2] in ("- ", "+ ")]
    assert [d[:10] for d in changed] == ["-   lr: 0.", "+   lr: 0."], changed
    assert (root / "models" / "last.pt").is_file()  # the experiment's resume point, left in the workspace

    for back, params in (
        (["exp", "apply", "HEAD"], baseline),  # back to the baseline
        (["exp", "apply", "lr-high"], experiment),
        (["checkout", "--force"], baseline),  # ... or back by git and dvc checkout
    ):
        if back[0] == "checkout":
            _git(root, "checkout", "HEAD", "--", ".")
        run_dvc(back, root)
        assert (root / "params.yaml").read_text() == params
        assert run_dvc(["status"], root).strip() == "Data and pipelines are up to date.", back
        out = run_dvc(["repro"], root)
        assert "Running stage" not in out and "Data and pipelines are up to date." in out, (back, out)
