"""The download step's record stays true: the settings ``data.dvc`` names are those that produced the data beside
them, whatever stopped a run; a failed run leaves ``data/raw`` and ``data.dvc`` as they were; what an interrupted
run left is cleared by the next, never while another download is at work."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import make_project, tiny_params

import cxr.ops.dvc as dvc_ops
from cxr.core.config import parse_settings
from cxr.data.download import DownloadResult, download
from cxr.ops.dvc import DvcError, dvc_env
from cxr.ops.lineage import read_data_dvc

# Two settings that make two different datasets, small enough to make in about a second.
A = {"download": {"synthetic": {"size": 64}}}
B = {"download": {"synthetic": {"size": 72}}}


def run(root: Path, change: dict) -> DownloadResult:
    s = parse_settings(tiny_params(**change))
    return download(s.base, s.download, s.paths(root))


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def dvc_status(root: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "data.dvc"], cwd=root, capture_output=True, text=True, env=dvc_env()
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def made(module_tmp: Path) -> dict[str, DownloadResult]:
    """A project holding A's data, and what a clean download of A and of B records."""
    root = make_project(module_tmp / "a", tiny_params(**A))
    out = {"A": run(root, A)}
    other = module_tmp / "b"
    shutil.copytree(root, other, symlinks=True)
    out["B"] = run(other, B)
    assert out["A"].data_version != out["B"].data_version
    return out


@pytest.fixture
def project(made: dict[str, DownloadResult], module_tmp: Path, tmp_path: Path) -> Path:
    """A copy of the project that holds A's data."""
    return Path(shutil.copytree(module_tmp / "a", tmp_path / "p", symlinks=True))


def assert_holds(root: Path, result: DownloadResult, made: DownloadResult) -> None:
    """The run made ``made``'s data, and data.dvc records it with the settings that produced it."""
    doc = read_data_dvc(root)
    assert result.data_version == made.data_version
    assert doc["outs"][0]["md5"] == made.data_version
    assert doc["meta"]["fingerprint"] == made.fingerprint
    assert doc["meta"]["md5"] == made.data_version
    assert "up to date" in dvc_status(root)


def test_a_kill_during_the_commit_does_not_bring_back_the_old_data(
    project: Path, made: dict[str, DownloadResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = dvc_ops.run_dvc

    def killed_at_commit(args: list[str], root: Path, on_line=None) -> str:
        if args[0] == "commit":  # a kill -9 here runs no clean-up: nothing after this line happens
            raise KeyboardInterrupt
        return real(args, root, on_line)

    monkeypatch.setattr(dvc_ops, "run_dvc", killed_at_commit)
    with pytest.raises(KeyboardInterrupt):
        run(project, B)
    monkeypatch.undo()
    left = read_data_dvc(project)
    # The rerun fetches B again instead of restoring A from the cache and calling it B ...
    again = run(project, B)
    assert not again.skipped
    assert_holds(project, again, made["B"])
    # ... because the record the kill left claimed no settings for data they did not produce.
    assert "meta" not in left or left["meta"].get("md5") == left["outs"][0]["md5"]


def test_settings_beside_other_data_are_not_trusted(project: Path, made: dict[str, DownloadResult]) -> None:
    # data/raw edited and committed by hand: DVC keeps the meta (A's settings) beside the new hash.
    shutil.copyfile(project / "data" / "raw" / "Normal.zip", project / "data" / "raw" / "COVID.zip")
    subprocess.run(
        [sys.executable, "-m", "dvc", "commit", "--force", "-q", "data.dvc"], cwd=project, check=True, env=dvc_env()
    )
    assert read_data_dvc(project)["meta"]["fingerprint"] == made["A"].fingerprint
    again = run(project, A)
    assert not again.skipped
    assert_holds(project, again, made["A"])


def test_a_record_without_the_data_hash_is_fetched_again_and_said_so_once(
    project: Path, made: dict[str, DownloadResult], caplog: pytest.LogCaptureFixture
) -> None:
    doc = read_data_dvc(project)
    doc["meta"].pop("md5", None)  # as data.dvc was written before the settings recorded their data
    (project / "data.dvc").write_text(yaml.safe_dump(doc, sort_keys=False))
    with caplog.at_level(logging.INFO, logger="cxr.data.download"):
        again = run(project, A)
    assert not again.skipped
    assert_holds(project, again, made["A"])
    said = [r.getMessage() for r in caplog.records if "older version" in r.getMessage()]
    assert len(said) == 1 and "fetching the data again" in said[0]
    assert run(project, A).skipped  # and from then on it is up to date


def test_a_failed_commit_leaves_the_data_and_its_record_as_they_were(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = tree(project / "data" / "raw"), (project / "data.dvc").read_bytes()
    real = dvc_ops.run_dvc

    def failing_commit(args: list[str], root: Path, on_line=None) -> str:
        if args[0] == "commit":
            raise DvcError("`dvc commit` failed: No space left on device")
        return real(args, root, on_line)

    monkeypatch.setattr(dvc_ops, "run_dvc", failing_commit)
    with pytest.raises(DvcError, match="No space left"):
        run(project, B)
    assert (tree(project / "data" / "raw"), (project / "data.dvc").read_bytes()) == before
    assert sorted(p.name for p in (project / "data").iterdir()) == [".gitignore", ".raw.lock", "raw"]


LEFTOVERS = (
    ".raw-3f2a9c1b7d4e",  # the packed staging folder
    ".raw-loose-0a1b2c3d4e5f",  # the loose staging folder ...
    ".raw-loose-0a1b2c3d4e5f.build-9e8d7c6b5a4f",  # ... and the ingestion build folder named after it
    ".raw-loose-0a1b2c3d4e5f.unzip-1a2b3c4d5e6f",  # ... and the unpacked source zip
    ".raw.old-12ab34cd",  # the data replaced by the swap
)


def plant_leftovers(root: Path) -> None:
    for name in LEFTOVERS:
        (root / "data" / name / "COVID").mkdir(parents=True)
        (root / "data" / name / "COVID" / "x.png").write_bytes(b"stale")
    (root / ".data.dvc.4242.140000.tmp").write_text("outs: []\n")


def test_leftovers_of_interrupted_downloads_are_removed(project: Path, made: dict[str, DownloadResult]) -> None:
    plant_leftovers(project)
    again = run(project, A)
    assert again.skipped  # nothing to download, and yet the leftovers go
    assert sorted(p.name for p in (project / "data").iterdir()) == [".gitignore", ".raw.lock", "raw"]
    assert not list(project.glob(".data.dvc.*.tmp"))
    assert_holds(project, again, made["A"])


def test_a_running_download_keeps_its_folders_and_a_second_one_is_refused(project: Path) -> None:
    from filelock import FileLock

    plant_leftovers(project)
    # Another process's download holds the lock (an OS lock: held by a separate open file, as another process's).
    other = FileLock(project / "data" / ".raw.lock", timeout=0)
    other.acquire()
    (project / "data" / ".raw.pid").write_text("4242\n")
    before = tree(project / "data")
    try:
        with pytest.raises(RuntimeError, match=r"another download \(process 4242\)"):
            run(project, B)
    finally:
        other.release()
    assert tree(project / "data") == before


def test_a_fresh_clone_makes_the_data_again_and_says_why_in_plain_words(project: Path, made, caplog) -> None:
    """data.dvc records a version no cache holds (a fresh clone, no remote): the expected path, not an error."""
    shutil.rmtree(project / "data" / "raw")
    shutil.rmtree(project / ".dvc" / "cache")
    caplog.set_level(logging.DEBUG, logger="cxr.data.download")
    again = run(project, A)
    assert again.data_version == made["A"].data_version and not again.skipped
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert any("which the DVC cache does not hold (and no DVC remote is configured): a fresh clone" in m for m in said)
    assert not any("failed" in m or "exit" in m for m in said), said


def test_recorded_data_comes_back_from_the_remote_when_the_cache_lacks_it(project: Path, made, tmp_path: Path) -> None:
    """A teammate's clone with the team's DVC remote: the recorded data is pulled, not made again."""
    remote = tmp_path / "remote"
    subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "add", "-d", "team", str(remote)],
        cwd=project,
        check=True,
        env=dvc_env(),
    )
    subprocess.run([sys.executable, "-m", "dvc", "push", "-q", "data.dvc"], cwd=project, check=True, env=dvc_env())
    shutil.rmtree(project / "data" / "raw")
    shutil.rmtree(project / ".dvc" / "cache")
    pulled = run(project, A)
    assert pulled.skipped and pulled.data_version == made["A"].data_version
