"""Lineage: what a run was made from (the data version DVC records, the git commit, file hashes, flat params).

Light on purpose (no DVC, MLflow or torch import): the report stage and the registration both read it.
"""

from __future__ import annotations

import glob
import hashlib
import subprocess
from pathlib import Path

import yaml

from cxr.core.paths import Paths, ResolvedPaths

#: The DVC file that versions the raw data.
DATA_DVC = "data.dvc"


def read_data_dvc(root: Path) -> dict:
    """The contents of ``data.dvc`` (empty when absent)."""
    path = root / DATA_DVC
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def data_version(root: Path) -> str | None:
    """The md5 that ``data.dvc`` records for the raw data: the data version."""
    outs = read_data_dvc(root).get("outs") or [{}]
    return outs[0].get("md5")


def file_hash(path: Path) -> str | None:
    """sha256 of a file such as ``dvc.lock``, or None when it does not exist."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


#: What the pipeline writes in the work tree besides its outputs under ``base.paths``: the DVC files its steps
#: rewrite, and the MLflow and Prefect stores it keeps in the project by default.
PIPELINE_FILES: tuple[str, ...] = ("dvc.lock", DATA_DVC, "mlflow.db", "mlartifacts", "mlruns", ".prefect")


def pipeline_writes(paths: ResolvedPaths) -> list[str]:
    """What a pipeline run writes in the work tree, as git glob pathspecs relative to the root: ``PIPELINE_FILES``,
    each output under ``base.paths``, and beside it the ``.gitignore`` DVC keeps (``data/.gitignore`` lists
    ``/raw``) and the step's own locks and staging (``data/.raw.pid``, ``reports/.metrics-*``)."""
    root = paths.root.resolve()
    found = {glob.escape(f) for f in PIPELINE_FILES}
    for path in paths.model_dump(exclude={"root"}).values():
        try:
            rel = Path(path).resolve().relative_to(root)
        except ValueError:  # outside the project (a cache moved by CXR_CACHE_DIR)
            continue
        parent = "" if rel.parent == Path(".") else glob.escape(rel.parent.as_posix()) + "/"
        found.update({glob.escape(rel.as_posix()), f"{parent}.{glob.escape(rel.name)}*"})
        if parent:  # the project's own .gitignore is not DVC's to keep
            found.add(f"{parent}.gitignore")
    return sorted(found)


def git_commit(root: Path, paths: ResolvedPaths | None = None) -> tuple[str, bool]:
    """The checked-out commit and whether the code differs from it: uncommitted changes, untracked files included,
    to anything but what the pipeline itself writes (``pipeline_writes``; ``paths`` default: ``base.paths``'
    defaults under ``root``).

    A fresh run rewrites ``dvc.lock``, ``data.dvc`` and its metrics files before it registers: counting those, every
    run from a clean checkout would say dirty.
    """
    spec = [".", *(f":(exclude,glob){p}" for p in pipeline_writes(paths or Paths().resolve(root)))]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        # Every untracked file by name: a folder shown whole would hide an excluded output among new code.
        status = ["git", "status", "--porcelain", "--untracked-files=all", "--", *spec]
        dirty = subprocess.run(status, cwd=root, capture_output=True, text=True, check=True)
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
