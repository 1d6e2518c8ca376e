"""`cxr download` killed with SIGKILL at each point of its work (no clean-up of any kind runs): the settings that
``data.dvc`` names always describe the data beside them, and the next run ends with the new data, recorded, and
nothing left over.

The kill comes from the child process itself, from a wrapper this test puts around one function of the step before
running `cxr download`: the production code has no hook for it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import make_project, tiny_params

from cxr.core.config import parse_settings
from cxr.data.download import DownloadResult, download
from cxr.ops.dvc import stage_status
from cxr.ops.lineage import read_data_dvc

pytestmark = pytest.mark.slow

A = {"download": {"synthetic": {"size": 64}}}
B = {"download": {"synthetic": {"size": 72}}}

# Run in the project (its copy of cxr), with B's params: wrap one function so that it kills this process.
CHILD = """
import os, signal, sys
from pathlib import Path

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def counting(fn, n):
    calls = [0]
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            die()
        return fn(*args, **kwargs)
    return wrapper

point = sys.argv[1]
if point == "generation":  # the 30th of 80 synthetic images
    import cxr.data.synthetic as m
    m._write_one = counting(m._write_one, 30)
elif point == "packing":  # half-way through the first class archive
    import zipfile
    zipfile.ZipFile.writestr = counting(zipfile.ZipFile.writestr, 30)
elif point == "swap":  # the old data moved aside, the new not yet in its place
    rename = os.rename
    def swap(src, dst):
        if Path(dst).name == "raw" and Path(src).name.startswith(".raw-"):
            die()
        return rename(src, dst)
    os.rename = swap
elif point in ("commit", "committed"):  # before `dvc commit` runs, or once it has written data.dvc
    import cxr.ops.dvc as m
    run_dvc = m.run_dvc
    def commit(args, root, on_line=None):
        if args[0] == "commit" and point == "commit":
            die()
        out = run_dvc(args, root, on_line)
        if args[0] == "commit":
            die()
        return out
    m.run_dvc = commit
elif point == "settings":  # the new data.dvc written in full beside it, not yet renamed into place
    replace = os.replace
    def settle(src, dst):
        if Path(dst).name == "data.dvc" and "fingerprint" in Path(src).read_text():
            die()
        return replace(src, dst)
    os.replace = settle
import runpy
sys.argv = ["cxr", "download"]
runpy.run_module("cxr", run_name="__main__", alter_sys=True)
"""

POINTS = ("generation", "packing", "swap", "commit", "committed", "settings")


def run(root: Path, change: dict) -> DownloadResult:
    s = parse_settings(tiny_params(**change))
    return download(s.base, s.download, s.paths(root))


@pytest.fixture(scope="module")
def made(module_tmp: Path) -> dict[str, DownloadResult]:
    """A project holding A's data with B's params, and what a clean download of A and of B records."""
    root = make_project(module_tmp / "a", tiny_params(**A))
    out = {"A": run(root, A)}
    other = module_tmp / "b"
    shutil.copytree(root, other, symlinks=True)
    out["B"] = run(other, B)
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(**B), sort_keys=False))
    return out


def true_to_its_data(root: Path, made: dict[str, DownloadResult]) -> bool:
    """No settings in data.dvc, or settings beside the very data they produced."""
    doc = read_data_dvc(root)
    meta, held = doc.get("meta"), doc["outs"][0].get("md5")
    if meta is None:
        return True
    produced = {r.fingerprint: r.data_version for r in made.values()}
    return produced.get(meta["fingerprint"]) == held and meta.get("md5", held) == held


@pytest.mark.parametrize("point", POINTS)
def test_a_kill_at_any_point_leaves_a_true_record_and_the_rerun_the_new_data(
    point: str, made: dict[str, DownloadResult], module_tmp: Path, tmp_path: Path
) -> None:
    root = Path(shutil.copytree(module_tmp / "a", tmp_path / "p", symlinks=True))
    child = subprocess.run([sys.executable, "-c", CHILD, point], cwd=root, capture_output=True, text=True)
    assert child.returncode == -9, child.stdout + child.stderr  # killed where asked, not finished or failed

    assert true_to_its_data(root, made), (root / "data.dvc").read_text()

    again = run(root, B)
    doc = read_data_dvc(root)
    assert again.data_version == doc["outs"][0]["md5"] == made["B"].data_version
    assert doc["meta"]["fingerprint"] == made["B"].fingerprint
    assert not stage_status(root, "data.dvc")
    assert not [p.name for p in (root / "data").iterdir() if p.name not in (".gitignore", ".raw.lock", "raw")]
    assert not list(root.glob(".data.dvc.*"))
    assert doc["meta"]["md5"] == made["B"].data_version
