"""The log: HTTP clients quiet below DEBUG, no download bars in a file, stage lines relayed at their level."""

from __future__ import annotations

import logging
import os
import sys

import pytest
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

from cxr.core.logs import ARTIFACT_BAR_ENV, CLIENT_LOGGERS, LOG_FORMAT, quiet_clients, relayed


@pytest.mark.parametrize(("level", "expected"), [("INFO", logging.WARNING), ("DEBUG", logging.DEBUG)])
def test_http_request_lines_show_only_at_debug(level: str, expected: int) -> None:
    quiet_clients(level)
    assert {logging.getLogger(name).level for name in CLIENT_LOGGERS} == {expected}


def test_no_mlflow_download_bars_in_a_log_file(monkeypatch, tmp_path) -> None:
    """A bar drawn into a file is one long line of carriage returns: off when stderr is not a terminal."""
    monkeypatch.delenv(ARTIFACT_BAR_ENV, raising=False)
    with open(tmp_path / "log", "w") as log:
        monkeypatch.setattr(sys, "stderr", log)
        quiet_clients("INFO")
    assert os.environ[ARTIFACT_BAR_ENV] == "false"
    assert not MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.get()
    # A terminal keeps MLflow's default (bars on), and a user's own setting is kept either way.
    monkeypatch.delenv(ARTIFACT_BAR_ENV)
    monkeypatch.setattr(sys, "stderr", type("Tty", (), {"isatty": staticmethod(lambda: True)})())
    quiet_clients("INFO")
    assert ARTIFACT_BAR_ENV not in os.environ
    monkeypatch.setenv(ARTIFACT_BAR_ENV, "true")
    with open(tmp_path / "log", "w") as log:
        monkeypatch.setattr(sys, "stderr", log)
        quiet_clients("INFO")
    assert os.environ[ARTIFACT_BAR_ENV] == "true"


def test_a_stage_line_keeps_its_level_and_loses_its_stamp() -> None:
    record = logging.LogRecord("cxr.data.ingest", logging.WARNING, __file__, 1, "skipped %s", ("a.png",), None)
    line = logging.Formatter(LOG_FORMAT).format(record)
    assert relayed(line) == (logging.WARNING, "cxr.data.ingest: skipped a.png")
    # Anything else (DVC's own output, a traceback line) is relayed as it is, at INFO.
    for other in ("Running stage 'train':", "2026-12-06 oops", '  File "x.py", line 1'):
        assert relayed(other) == (logging.INFO, other)
