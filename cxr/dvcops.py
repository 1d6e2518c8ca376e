"""Thin calls into DVC's command line and readers of what it records."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

DATA_DVC = "data.dvc"


class DvcError(RuntimeError):
    """A DVC command failed; the message holds its output."""


def dvc_env() -> dict[str, str]:
    """The environment for DVC and its stages: this interpreter's scripts first on PATH, telemetry off."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    return env


def run_dvc(args: list[str], root: Path, capture: bool = True) -> str:
    """Run ``dvc ARGS`` in ``root`` with this interpreter; raise DvcError with its output on failure."""
    cmd = [sys.executable, "-m", "dvc", *args]
    log.debug("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, cwd=root, env=dvc_env(), text=True, capture_output=capture)
    if proc.returncode != 0:
        out = (proc.stdout or "") + (proc.stderr or "")
        raise DvcError(f"`dvc {' '.join(args)}` failed in {root} (exit {proc.returncode}):\n{out.strip()}")
    return proc.stdout or ""


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


def track_raw(root: Path, raw_rel: str, meta: dict) -> str:
    """Version ``raw_rel`` in ``data.dvc`` (content hash into the DVC cache), keeping ``meta``; return the md5."""
    path = root / DATA_DVC
    doc = read_data_dvc(root)
    outs = doc.get("outs") or [{}]
    if outs[0].get("path") != raw_rel:
        outs = [{"path": raw_rel}]
    doc = {"outs": [{"path": raw_rel, **{k: v for k, v in outs[0].items() if k != "path"}}], "meta": meta}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.replace(tmp, path)
    run_dvc(["commit", "--force", "--quiet", DATA_DVC], root)
    return data_version(root) or ""


def has_remote(root: Path) -> bool:
    """Whether a DVC remote is configured."""
    return bool(run_dvc(["remote", "list"], root).strip())


def stage_status(root: Path, *targets: str) -> dict:
    """``dvc status --json`` (of ``targets``, or everything) as a mapping: empty when nothing is to be done."""
    import json

    out = run_dvc(["status", "--json", *targets], root).strip()
    return json.loads(out) if out else {}
