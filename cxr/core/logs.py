"""What the pipeline's log shows at its level: its own lines and real warnings, not every HTTP request."""

from __future__ import annotations

import logging

#: Loggers of the HTTP clients Prefect and MLflow use: a line per request at INFO (the Prefect API's included).
CLIENT_LOGGERS: tuple[str, ...] = ("httpx", "httpcore", "urllib3")


def quiet_clients(level: str) -> None:
    """HTTP request lines only with ``base.log_level: DEBUG``: at INFO they drown the pipeline's own lines."""
    for name in CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
