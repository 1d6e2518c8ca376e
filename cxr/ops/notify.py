"""Failure notifications: a JSON message to a webhook (``CXR_NOTIFY_WEBHOOK``), or a log line when none is set."""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

log = logging.getLogger(__name__)

#: The environment variable holding the webhook URL (Slack, Teams, Mattermost or any JSON endpoint).
WEBHOOK_ENV = "CXR_NOTIFY_WEBHOOK"
#: Seconds to wait for the webhook: a hook must never hold up the end of a run.
TIMEOUT_S = 5.0


def failure_message(flow: Any, flow_run: Any, state: Any) -> dict[str, Any]:
    """The JSON body: who failed, how, and where to look (``text`` is what Slack-style webhooks show)."""
    flow_name = getattr(flow, "name", str(flow))
    run_name = getattr(flow_run, "name", None)
    run_id = str(getattr(flow_run, "id", "") or "")
    state_type = getattr(getattr(state, "type", None), "value", None) or str(getattr(state, "type", ""))
    state_name = getattr(state, "name", None) or state_type
    message = getattr(state, "message", None) or ""
    ui = os.environ.get("PREFECT_UI_URL", "").rstrip("/")
    body: dict[str, Any] = {
        "text": f"{flow_name} run {run_name or run_id} ended {state_name}: {message}".strip(),
        "flow": flow_name,
        "flow_run": run_name,
        "flow_run_id": run_id,
        "deployment_id": str(getattr(flow_run, "deployment_id", None) or "") or None,
        "state": state_name,
        "state_type": state_type,
        "message": message,
        "parameters": _jsonable(getattr(flow_run, "parameters", None) or {}),
    }
    if ui and run_id:
        body["url"] = f"{ui}/runs/flow-run/{run_id}"
    return body


def _jsonable(value: Any) -> Any:
    """``value`` if JSON can encode it, else its repr (parameters may hold anything)."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def _host(url: str) -> str:
    """scheme://host of ``url``: webhook paths often carry a secret token, which must not reach the logs."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}"


def post_json(url: str, body: dict[str, Any], timeout_s: float = TIMEOUT_S) -> bool:
    """POST ``body`` as JSON to an http(s) ``url``; True on a 2xx answer, False (logged) on anything else."""
    if not url.startswith(("http://", "https://")):
        log.error("%s is not an http(s) URL; notification not sent", WEBHOOK_ENV)
        return False
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "cxr-mlops-notify"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            ok = 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError) as err:  # HTTPError is a URLError
        log.error("failure notification to %s failed: %s", _host(url), getattr(err, "reason", err))
        return False
    if not ok:
        log.error("failure notification to %s answered %s", _host(url), resp.status)
    return ok


def notify_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect ``on_failure``/``on_crashed`` hook: post the failure to ``CXR_NOTIFY_WEBHOOK`` or log it."""
    try:
        body = failure_message(flow, flow_run, state)
        log.error("pipeline failure: %s", body["text"])
        url = os.environ.get(WEBHOOK_ENV, "").strip()
        if not url:
            log.info("%s is not set; failure logged only", WEBHOOK_ENV)
            return
        if post_json(url, body):
            log.info("failure notification sent to %s", _host(url))
    except Exception:  # noqa: BLE001 - a broken notifier must not mask the run's own failure
        log.exception("failure notification could not be built or sent")


def notify_drift(summary: str, details: dict[str, Any]) -> bool:
    """Post a drift notice to ``CXR_NOTIFY_WEBHOOK`` (the failure webhook); False when unset or not delivered."""
    log.warning("data drift: %s", summary)
    url = os.environ.get(WEBHOOK_ENV, "").strip()
    if not url:
        log.info("%s is not set; drift logged only", WEBHOOK_ENV)
        return False
    body = {"text": f"cxr-pipeline data drift: {summary}", "kind": "drift", "details": _jsonable(details)}
    return post_json(url, body)
