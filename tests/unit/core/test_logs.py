"""The log: HTTP clients quiet below DEBUG; a stage's lines relayed at their level with one time stamp."""

from __future__ import annotations

import logging

import pytest

from cxr.core.logs import CLIENT_LOGGERS, LOG_FORMAT, quiet_clients, relayed


@pytest.mark.parametrize(("level", "expected"), [("INFO", logging.WARNING), ("DEBUG", logging.DEBUG)])
def test_http_request_lines_show_only_at_debug(level: str, expected: int) -> None:
    quiet_clients(level)
    assert {logging.getLogger(name).level for name in CLIENT_LOGGERS} == {expected}


def test_a_stage_line_keeps_its_level_and_loses_its_stamp() -> None:
    record = logging.LogRecord("cxr.data.ingest", logging.WARNING, __file__, 1, "skipped %s", ("a.png",), None)
    line = logging.Formatter(LOG_FORMAT).format(record)
    assert relayed(line) == (logging.WARNING, "cxr.data.ingest: skipped a.png")
    # Anything else (DVC's own output, a traceback line) is relayed as it is, at INFO.
    for other in ("Running stage 'train':", "2026-12-06 oops", '  File "x.py", line 1'):
        assert relayed(other) == (logging.INFO, other)
