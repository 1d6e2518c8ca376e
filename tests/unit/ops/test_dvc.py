"""DVC calls: a killed stage is told apart from a failing one, an unreachable remote from a refusing one (only the
first of each is worth a retry)."""

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


# What DVC prints when its S3 remote fails (dvc-s3 / botocore), as seen through `dvc push`.
_STORE_DOWN = 'ERROR: unexpected error - Could not connect to the endpoint URL: "http://127.0.0.1:9/cxr/dvc/files"'
_NO_BUCKET = "ERROR: failed to transfer 'ab' - The specified bucket does not exist: An error occurred (NoSuchBucket)"
_NO_KEYS = "ERROR: unexpected error - Unable to locate credentials"


@pytest.mark.parametrize(
    ("output", "transient"),
    [(_STORE_DOWN, True), (_NO_BUCKET, False), (_NO_KEYS, False)],
    ids=["down", "bucket", "keys"],
)
def test_a_remote_failure_names_the_remote_and_its_endpoint(monkeypatch, output: str, transient: bool) -> None:
    import cxr.ops.dvc as ops

    def fake_dvc(args, root, on_line=None):
        if args[:2] == ["config", "--list"]:
            return "core.remote=store\nremote.store.url=s3://cxr/dvc\nremote.store.endpointurl=http://127.0.0.1:9\n"
        raise DvcError(f"`dvc {' '.join(args)}` failed in {root} (exit 1):\n{output}")

    monkeypatch.setattr(ops, "run_dvc", fake_dvc)
    with pytest.raises(ops.RemoteError) as err:
        ops.push(Path("."), ("data.dvc",))
    message = str(err.value)
    assert "remote 'store' (s3://cxr/dvc) at http://127.0.0.1:9" in message and "`dvc push`" in message
    assert output.split(" - ", 1)[-1].split(":")[0] in message and not message.count("ERROR:")
    assert is_transient(err.value) is transient


def test_other_push_failures_are_left_as_they_are(monkeypatch) -> None:
    import cxr.ops.dvc as ops

    def fake_dvc(args, root, on_line=None):
        raise DvcError("`dvc push` failed: ERROR: failed to push data to the cloud - 1 files failed to upload")

    monkeypatch.setattr(ops, "run_dvc", fake_dvc)
    with pytest.raises(DvcError) as err:
        ops.push(Path("."))
    assert type(err.value) is DvcError
