"""DVC calls: a killed stage is told apart from a failing one (only the first is worth a retry)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cxr.ops.dvc import DvcError, StageKilled, run_dvc
from tasks.pipeline_tasks import is_transient


def _repo(root: Path, cmd: str) -> Path:
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    (root / "dvc.yaml").write_text(f"stages:\n  s:\n    cmd: {cmd}\n    outs: [out.txt]\n")
    return root


def test_a_killed_stage_is_transient(tmp_path: Path) -> None:
    root = _repo(tmp_path, "python -c 'import os, signal; os.kill(os.getpid(), signal.SIGKILL)'")
    lines: list[str] = []
    with pytest.raises(StageKilled) as err:
        run_dvc(["repro", "s"], root, on_line=lines.append)
    assert is_transient(err.value)
    assert any("Running stage" in line for line in lines)


def test_a_failing_stage_is_not(tmp_path: Path) -> None:
    root = _repo(tmp_path, "python -c 'raise SystemExit(3)'")
    with pytest.raises(DvcError) as err:
        run_dvc(["repro", "s"], root)
    assert not isinstance(err.value, StageKilled)
    assert not is_transient(err.value)
    assert "exit" in str(err.value)


def test_track_raw_names_settings_only_beside_the_data_they_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cxr.ops.dvc as dvc_ops
    from cxr.ops.dvc import track_raw
    from cxr.ops.lineage import read_data_dvc

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    data = tmp_path / "data" / "raw"
    data.mkdir(parents=True)
    (data / "a.txt").write_text("A")
    first = track_raw(tmp_path, "data/raw", {"fingerprint": "A"})
    doc = read_data_dvc(tmp_path)
    assert doc["outs"][0]["md5"] == first
    assert doc["meta"] == {"fingerprint": "A", "md5": first}

    (data / "a.txt").write_text("B")
    real = dvc_ops.run_dvc

    def killed_at_commit(args: list[str], root: Path, on_line=None) -> str:
        if args[0] == "commit":
            raise KeyboardInterrupt  # as a kill would leave it: nothing after this runs
        return real(args, root, on_line)

    monkeypatch.setattr(dvc_ops, "run_dvc", killed_at_commit)
    with pytest.raises(KeyboardInterrupt):
        track_raw(tmp_path, "data/raw", {"fingerprint": "B"})
    doc = read_data_dvc(tmp_path)
    assert doc["outs"][0]["md5"] == first
    assert "meta" not in doc  # B's settings are not named beside A's data
