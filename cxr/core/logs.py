"""What the pipeline's log shows at its level: its own lines and real warnings, not every HTTP request."""

from __future__ import annotations

import logging
import os
import re
import sys

#: Loggers of the HTTP clients Prefect and MLflow use: a line per request at INFO (the Prefect API's included).
CLIENT_LOGGERS: tuple[str, ...] = ("httpx", "httpcore", "urllib3")
#: MLflow draws a progress bar for each artifact download: on a terminal it shows, in a log file it is noise.
ARTIFACT_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


def quiet_clients(level: str) -> None:
    """HTTP request lines only with ``base.log_level: DEBUG``: at INFO they drown the pipeline's own lines. No
    MLflow download bars when stderr is not a terminal (a log file, DVC under Prefect, CI), unless the user set
    ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` themselves."""
    for name in CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    if not sys.stderr.isatty():
        os.environ.setdefault(ARTIFACT_BAR_ENV, "false")


#: The format of the ``cxr`` command's log lines (stderr): what a stage run by DVC writes.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) (.*)$")


def relayed(line: str) -> tuple[int, str]:
    """A child process's log line as (level, text) for a logger that stamps its own time: ``LOG_FORMAT``'s
    time dropped and its level kept (a stage's warning stays a warning); any other line is INFO as it is."""
    match = _LINE.match(line)
    if match is None:
        return logging.INFO, line
    return logging.getLevelName(match.group(1)), match.group(2)
