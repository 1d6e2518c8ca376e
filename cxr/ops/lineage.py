"""Lineage: what a run was made from (the data version DVC records, the git commit, file hashes, flat params).

Light on purpose (no DVC, MLflow or torch import): the report stage and the registration both read it.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import yaml

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
