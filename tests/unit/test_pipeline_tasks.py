"""The flow's tasks without a Prefect server: which failures are retried, time limits, streaming a stage's output."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from cxr.core.sections import ConfigError
from cxr.ops import notify
from cxr.ops.dvc import DvcError
from cxr.ops.tracking import TrackingUnavailable
from tasks import pipeline_tasks as pt

# --- retries: only what can heal by itself ------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "retry"),
    [
        (ConnectionError("reset by peer"), True),
        (TimeoutError("read timed out"), True),
        (OSError(5, "Input/output error"), True),
        (TrackingUnavailable("mlflow down"), True),
        (pt.DvcLockBusy("Unable to acquire lock"), True),
        (ConfigError("params.yaml: train.epochz: unknown key"), False),
        (ValueError("bad value"), False),
        (FileNotFoundError("data/raw"), False),
        (PermissionError("read-only"), False),
        (DvcError("`dvc repro train` failed"), False),
        (RuntimeError("train.device is 'cuda' but no CUDA device is available"), False),
        (KeyError("accuracy"), False),
    ],
)
def test_retry_condition_only_retries_transient_errors(exc: BaseException, retry: bool) -> None:
    class State:
        def result(self):
            raise exc

    assert pt.is_transient(exc) is retry
    assert pt._transient(None, None, State()) is retry


def test_retry_condition_on_a_real_prefect_failed_state() -> None:
    from prefect.states import Completed, Failed

    assert pt._transient(None, None, Failed(data=ConnectionError("reset"))) is True
    assert pt._transient(None, None, Failed(data=ConfigError("params.yaml: bad"))) is False
    assert pt._transient(None, None, Completed(data=1)) is False


def test_tasks_retry_with_the_condition_and_have_time_limits() -> None:
    for t, limit in (
        (pt.download_data, pt.DOWNLOAD_TIMEOUT_S),
        (pt.repro_stage, pt.STAGE_TIMEOUT_S),
        (pt.register_model, pt.REGISTER_TIMEOUT_S),
    ):
        assert t.retries >= 1 and t.retry_condition_fn is pt._transient, t.name
        assert t.timeout_seconds == limit, t.name
    assert pt.REGISTER_TIMEOUT_S < pt.DOWNLOAD_TIMEOUT_S <= pt.STAGE_TIMEOUT_S < pt.FLOW_TIMEOUT_S
    from flows.pipeline import pipeline

    assert pipeline.timeout_seconds == pt.FLOW_TIMEOUT_S
    assert notify.notify_failure in pipeline.on_failure_hooks and notify.notify_failure in pipeline.on_crashed_hooks


# --- streaming the stage output -----------------------------------------------------------------


def test_stream_command_passes_lines_as_they_come(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "print('one', flush=True)\n"
        "sys.stderr.write('progress 10%\\rprogress 100%\\n'); sys.stderr.flush()\n"
        "print('two', flush=True)\n"
        "sys.exit(3)\n"
    )
    seen: list[tuple[float, str]] = []
    code, out = pt.stream_command(
        [sys.executable, "-c", script], tmp_path, None, lambda line: seen.append((time.monotonic(), line))
    )
    assert code == 3
    assert [line for _, line in seen] == ["one", "progress 100%", "two"]  # stderr merged, last redraw only
    assert out == "one\nprogress 100%\ntwo"


def test_stream_command_kills_the_child_group_when_interrupted(tmp_path: Path) -> None:
    # The child starts a grandchild (as `dvc repro` starts the stage); both must die on a timeout.
    pidfile = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )

    class Timeout(Exception):
        pass

    def on_line(line: str) -> None:
        raise Timeout  # what Prefect's task timeout does to the task's thread

    with pytest.raises(Timeout):
        pt.stream_command([sys.executable, "-c", script], tmp_path, None, on_line)
    grandchild = int(pidfile.read_text())
    for _ in range(50):  # reaped by init shortly after the kill
        if not _alive(grandchild):
            break
        time.sleep(0.1)
    assert not _alive(grandchild)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().split(")")[-1].split()[0] == "Z")  # a zombie is dead


def test_stream_dvc_raises_dvc_error_with_the_output(tmp_path: Path) -> None:
    import logging

    with pytest.raises(DvcError) as err:
        pt.stream_dvc(["repro", "--single-item", "nosuch"], tmp_path, logging.getLogger("test"))
    assert not isinstance(err.value, pt.DvcLockBusy)
    assert "failed in" in str(err.value) and "exit" in str(err.value)
