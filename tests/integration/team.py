"""The team stack the integration tests start (and compose.yaml describes): one S3 store, one PostgreSQL database,
one MLflow server with its artifacts in the store, one Prefect server with a process worker, one DVC remote.

The names here are the ones compose.yaml uses (tests/unit/test_compose.py holds the two together); only the
ports differ: the tests take free loopback ports.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from integration.servers import (
    S3_CREDENTIALS,
    TELEMETRY_OFF,
    Process,
    create_bucket,
    mlflow_server,
    postgres_cluster,
    running_prefect_server,
    s3_server,
)

BUCKET = "cxr"
DVC_PREFIX = "dvc"
MLFLOW_PREFIX = "mlflow"
DVC_REMOTE_NAME = "store"
DVC_REMOTE_URL = f"s3://{BUCKET}/{DVC_PREFIX}"
MLFLOW_ARTIFACTS = f"s3://{BUCKET}/{MLFLOW_PREFIX}"
MLFLOW_DATABASE = "mlflow"
WORK_POOL = "cxr-process"
#: What the MLflow server needs to reach the store: its endpoint and the credentials.
MLFLOW_SERVER_ENV = ("MLFLOW_S3_ENDPOINT_URL", *S3_CREDENTIALS)
#: What a worker (and a teammate's shell) needs: the two servers, and the store's credentials for DVC.
WORKER_ENV = ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", *S3_CREDENTIALS)

BIN = Path(sys.executable).parent


@dataclass
class Stack:
    """The running servers and the environment a teammate's shell (or a worker) has."""

    s3: Process
    mlflow: Process
    prefect_api: str
    env: dict[str, str]
    mlflow_env: dict[str, str]
    backend_uri: str


def client_env(home: Path) -> dict[str, str]:
    """A clean environment for clients: telemetry off, this interpreter's scripts first, no stray settings."""
    env = {**os.environ, **TELEMETRY_OFF, **S3_CREDENTIALS}
    env.update(
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        PREFECT_HOME=str(home),
        PREFECT_UI_ENABLED="false",
        PREFECT_CLI_PROMPT="false",
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_LOGGING_LEVEL="INFO",
        DVC_NO_ANALYTICS="1",
        CXR_NOTIFY_WEBHOOK="",
    )
    return env


@contextlib.contextmanager
def team_stack(tmp: Path, prefect: bool = True) -> Iterator[Stack]:
    """Every server of the team stack on loopback, stopped by PID on exit."""
    with s3_server(tmp / "s3.log") as s3, postgres_cluster() as pg:
        create_bucket(s3.url, BUCKET)
        backend = pg.create_database(MLFLOW_DATABASE)
        mlflow_env = {"MLFLOW_S3_ENDPOINT_URL": s3.url, **S3_CREDENTIALS}
        with mlflow_server(backend, MLFLOW_ARTIFACTS, tmp / "mlflow.log", env=mlflow_env) as ml:
            env = client_env(tmp / "prefect-home")
            env["MLFLOW_TRACKING_URI"] = ml.url
            if not prefect:
                yield Stack(s3, ml, "", env, mlflow_env, backend)
                return
            with running_prefect_server(tmp / "prefect-home", env) as api:
                env["PREFECT_API_URL"] = api
                yield Stack(s3, ml, api, env, mlflow_env, backend)
