"""The failure and drift notices: JSON to a webhook on loopback, a log line without one, never an exception."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from cxr.ops import notify


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


def test_drift_notice_goes_to_the_failure_webhook(webhook, monkeypatch) -> None:
    monkeypatch.setenv(notify.WEBHOOK_ENV, f"http://127.0.0.1:{webhook.server_port}/hook")
    assert notify.notify_drift("embedding_mmd: p = 0.002 < alpha 0.01", {"champion_version": "3", "tests": {}})
    [(_, _, body)] = webhook.received
    assert body["kind"] == "drift" and "embedding_mmd" in body["text"]
    assert body["details"]["champion_version"] == "3"
    monkeypatch.delenv(notify.WEBHOOK_ENV)
    assert not notify.notify_drift("x", {})  # unset: logged only
    assert len(webhook.received) == 1
