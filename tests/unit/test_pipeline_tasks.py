"""The flow's helpers without a Prefect server: Markdown artifacts, the failure notifier, retries, streaming."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from cxr.core.sections import ConfigError
from cxr.ops import notify
from cxr.ops.dvc import DvcError
from cxr.ops.tracking import TrackingUnavailable
from cxr.reporting.summary import data_report_markdown, metrics_markdown
from tasks import pipeline_tasks as pt

# --- Markdown artifacts -------------------------------------------------------------------------


def test_metrics_markdown_rows_intervals_and_missing_keys() -> None:
    md = metrics_markdown(
        {"n": 400, "accuracy": 0.91234, "accuracy_ci_low": 0.88, "accuracy_ci_high": 0.94, "macro_auc": 0.97},
        {"lung_energy": 0.8123, "pointing_game": None},
    )
    assert "n = 400" in md
    assert "0.912" in md and "0.880" in md and "0.940" in md
    assert "| share of CAM energy inside the lungs | 0.812 |" in md
    assert "pointing game" not in md and "None" not in md


def test_data_report_markdown_counts_totals_and_duplicates() -> None:
    report = {
        "counts": {"COVID": {"train": 10, "valid": 2, "test": 3}, "Normal": {"train": 20, "valid": 4, "test": 5}},
        "duplicates": {
            "groups": 2,
            "images_in_groups": 5,
            "exact_copies": 1,
            "groups_crossing_splits": 0,
            "label_conflicts": [["a", "b"]],
        },
        "sizes": {"299x299": 44},
        "modes": {"L": 44},
    }
    md = data_report_markdown(report)
    assert "| COVID | 10 | 2 | 3 | 15 |" in md
    assert "| **all** | 30 | 6 | 8 | 44 |" in md
    assert "Near-duplicate groups: 2 (5 images), exact copies: 1" in md
    assert "conflicting labels: 1." in md
    assert "Image sizes: 299x299 (44)." in md


# --- the failure notifier -----------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    """Records each POST (path, headers, JSON body) and answers with the server's status."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.received.append((self.path, dict(self.headers), json.loads(body)))  # type: ignore[attr-defined]
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def webhook():
    """A webhook on 127.0.0.1 (free port) that records what it receives."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.received, server.status = [], 200  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _failed_run():
    flow = SimpleNamespace(name="cxr-pipeline")
    run = SimpleNamespace(
        name="brave-otter", id="0b7e-run", deployment_id=None, parameters={"params": "params.yaml", "root": Path("/x")}
    )
    state = SimpleNamespace(
        type=SimpleNamespace(value="FAILED"),
        name="Failed",
        message="Flow run encountered an exception: DvcError: `dvc repro` failed",
    )
    return flow, run, state


def test_notify_posts_json_to_the_webhook(webhook, monkeypatch) -> None:
    monkeypatch.setenv(notify.WEBHOOK_ENV, f"http://127.0.0.1:{webhook.server_port}/hooks/secret-token")
    monkeypatch.setenv("PREFECT_UI_URL", "http://127.0.0.1:4200/")
    notify.notify_failure(*_failed_run())
    assert len(webhook.received) == 1
    path, headers, body = webhook.received[0]
    assert path == "/hooks/secret-token"
    assert headers["Content-Type"] == "application/json"
    assert body["flow"] == "cxr-pipeline" and body["flow_run"] == "brave-otter" and body["state"] == "Failed"
    assert "DvcError" in body["message"] and body["text"].startswith("cxr-pipeline run brave-otter ended Failed")
    assert body["url"] == "http://127.0.0.1:4200/runs/flow-run/0b7e-run"
    assert body["parameters"] == repr({"params": "params.yaml", "root": Path("/x")})  # a Path is not JSON


def test_notify_without_webhook_only_logs(webhook, monkeypatch, caplog) -> None:
    monkeypatch.delenv(notify.WEBHOOK_ENV, raising=False)
    with caplog.at_level("INFO", logger="cxr.ops.notify"):
        notify.notify_failure(*_failed_run())
    assert webhook.received == []
    assert "pipeline failure: cxr-pipeline run brave-otter ended Failed" in caplog.text
    assert f"{notify.WEBHOOK_ENV} is not set" in caplog.text


def test_notify_never_raises_and_never_logs_the_token(webhook, monkeypatch, caplog) -> None:
    webhook.status = 500
    monkeypatch.setenv(notify.WEBHOOK_ENV, f"http://127.0.0.1:{webhook.server_port}/secret-token")
    with caplog.at_level("INFO", logger="cxr.ops.notify"):
        notify.notify_failure(*_failed_run())  # a 500 answer
    assert len(webhook.received) == 1
    assert "failure notification to http://127.0.0.1 failed: Internal Server Error" in caplog.text
    port = webhook.server_port
    webhook.shutdown()
    webhook.server_close()
    monkeypatch.setenv(notify.WEBHOOK_ENV, f"http://127.0.0.1:{port}/secret-token")
    timeouts: list[float] = []
    real_urlopen = notify.urllib.request.urlopen

    def urlopen(req, timeout):
        timeouts.append(timeout)
        return real_urlopen(req, timeout=timeout)

    monkeypatch.setattr(notify.urllib.request, "urlopen", urlopen)
    notify.notify_failure(*_failed_run())  # nobody listening
    assert timeouts == [notify.TIMEOUT_S]  # one bounded attempt, no retries
    monkeypatch.setenv(notify.WEBHOOK_ENV, "file:///etc/passwd")
    notify.notify_failure(*_failed_run())  # not http(s): refused
    notify.notify_failure(None, None, None)  # nonsense in: still no exception
    assert "secret-token" not in caplog.text


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


def test_drift_notice_goes_to_the_failure_webhook(webhook, monkeypatch) -> None:
    monkeypatch.setenv(notify.WEBHOOK_ENV, f"http://127.0.0.1:{webhook.server_port}/hook")
    assert notify.notify_drift("embedding_mmd: p = 0.002 < alpha 0.01", {"champion_version": "3", "tests": {}})
    [(_, _, body)] = webhook.received
    assert body["kind"] == "drift" and "embedding_mmd" in body["text"]
    assert body["details"]["champion_version"] == "3"
    monkeypatch.delenv(notify.WEBHOOK_ENV)
    assert not notify.notify_drift("x", {})  # unset: logged only
    assert len(webhook.received) == 1
