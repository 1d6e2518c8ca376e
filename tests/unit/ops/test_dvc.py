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
