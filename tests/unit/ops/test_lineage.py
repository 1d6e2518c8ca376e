"""Lineage: ``git_dirty`` says whether the code differs from the commit, not whether the pipeline wrote its outputs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from cxr.core.paths import Paths
from cxr.ops.lineage import git_commit, pipeline_writes

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
}

#: What a checkout of the project tracks: code, params, and the files DVC and the steps rewrite on every run.
TRACKED = {
    "cxr/model/networks.py": "x = 1\n",
    "params.yaml": "base: {}\n",
    "dvc.yaml": "stages: {}\n",
    "dvc.lock": "schema: '2.0'\n",
    "data.dvc": "outs: [{md5: abc.dir, path: raw}]\n",
    "data/.gitignore": "/raw\n",
    "data/split/.gitignore": "/manifest.csv\n",
    "data/split/report.json": "{}\n",
    "models/.gitignore": "/best.pt\n",
    "reports/.gitignore": "/eval\n",
    "reports/metrics_full.json": "{}\n",
    "reports/train/history.csv": "epoch\n1\n",
    "reports/metrics/test.json": "{}\n",
}


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, env=GIT_ENV)


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def _checkout(root: Path) -> Path:
    root.mkdir()
    _git(root, "init", "-q")
    _write(root, TRACKED)
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "init")
    return root


def _what_a_run_writes(root: Path) -> None:
    """Every kind of file a fresh pipeline run writes before registration, tracked ones rewritten."""
    _write(
        root,
        {
            "dvc.lock": "schema: '2.0'\nstages: {train: {}}\n",
            "data.dvc": "outs: [{md5: def.dir, path: raw}]\n",
            "data/.gitignore": "/raw\n/other\n",
            "data/raw/COVID.zip": "zip",
            "data/.raw.pid": "42\n",
            "data/cache/a.npy": "npy",
            "data/split/manifest.csv": "path\n",
            "data/split/report.json": '{"n": 1}\n',
            "models/best.pt": "weights",
            "models/.train.lock": "",
            "reports/metrics_full.json": '{"accuracy": 1}\n',
            "reports/train/history.csv": "epoch\n1\n2\n",
            "reports/metrics/test.json": '{"acc": 1}\n',
            "reports/eval/roc.csv": "fpr,tpr\n",
            "reports/report.html": "<html>",
            "mlflow.db": "sqlite",
            "mlartifacts/1/x": "artifact",
        },
    )


def test_a_run_that_wrote_its_outputs_is_not_dirty(tmp_path: Path) -> None:
    root = _checkout(tmp_path / "p")
    commit, dirty = git_commit(root)
    assert len(commit) == 40 and not dirty
    _what_a_run_writes(root)
    assert subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout
    assert git_commit(root) == (commit, False)


def test_changed_or_new_code_is_dirty(tmp_path: Path) -> None:
    root = _checkout(tmp_path / "p")
    _what_a_run_writes(root)
    (root / "cxr" / "model" / "networks.py").write_text("x = 2\n")
    assert git_commit(root)[1]
    _git(root, "checkout", "--", "cxr")
    assert not git_commit(root)[1]
    (root / "params.yaml").write_text("base: {seed: 1}\n")
    assert git_commit(root)[1]
    _git(root, "checkout", "--", "params.yaml")
    # A file beside the outputs that is none of them.
    (root / "reports" / "notes.py").write_text("print(1)\n")
    assert git_commit(root)[1]
    (root / "reports" / "notes.py").unlink()
    (root / "cxr" / "new.py").write_text("y = 1\n")
    assert git_commit(root)[1]


def test_outputs_follow_base_paths(tmp_path: Path) -> None:
    """Outputs moved by base.paths are left out where they are; the old places are code like any other."""
    root = _checkout(tmp_path / "p")
    paths = Paths(model_dir="weights", raw="store/raw").resolve(root)
    assert {"weights", "store/raw", "store/.gitignore", "store/.raw*", "dvc.lock", "data.dvc"} <= set(
        pipeline_writes(paths)
    )
    # store/ is new, so git would show it whole ("?? store/"): its files are compared one by one.
    _write(root, {"weights/best.pt": "w", "store/.gitignore": "/raw\n", "store/raw/a.zip": "z"})
    assert not git_commit(root, paths)[1]
    _write(root, {"store/notes.py": "n = 1\n"})
    assert git_commit(root, paths)[1]
    (root / "store" / "notes.py").unlink()
    _write(root, {"models/copy.pt": "w"})
    assert git_commit(root, paths)[1]  # models/ is no output under these paths


def test_a_cache_outside_the_project_is_no_pathspec(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "elsewhere"))
    root = _checkout(tmp_path / "p")
    assert not any("elsewhere" in p for p in pipeline_writes(Paths().resolve(root)))
    assert git_commit(root) == (git_commit(root)[0], False)


def test_no_git_is_unknown_and_clean(tmp_path: Path) -> None:
    assert git_commit(tmp_path) == ("unknown", False)
