"""compose.yaml describes the stack the integration tests start (tests/integration/team.py): same services, ports,
URIs, bucket and prefixes, and environment names. It cannot be started here (no container images), so this test
is what keeps it from drifting away from the tested stack."""

from __future__ import annotations

import re
from urllib.parse import urlparse

import pytest
import yaml
from conftest import REPO
from integration.servers import S3_CREDENTIALS
from integration.team import (
    BUCKET,
    DVC_PREFIX,
    DVC_REMOTE_NAME,
    DVC_REMOTE_URL,
    MLFLOW_ARTIFACTS,
    MLFLOW_DATABASE,
    MLFLOW_SERVER_ENV,
    WORK_POOL,
    WORKER_ENV,
)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


def option(command: list[str], name: str) -> str:
    """The value after ``name`` in a command list."""
    assert name in command, (name, command)
    return str(command[command.index(name) + 1])


def published(service: dict) -> set[str]:
    """The container ports a service publishes on the host."""
    return {str(p).rsplit(":", 1)[1] for p in service.get("ports", [])}


def test_the_services_of_a_team(compose: dict) -> None:
    assert set(compose["services"]) == {"postgres", "s3", "s3-bucket", "mlflow", "prefect", "worker"}
    # The servers and the worker run the project's image (the Dockerfile, with the team extra).
    images = {compose["services"][s]["image"] for s in ("mlflow", "prefect", "worker")}
    assert len(images) == 1
    [image] = images
    assert f"docker build -t {image} ." in (REPO / "compose.yaml").read_text()
    assert '".[team]"' in (REPO / "Dockerfile").read_text()


def test_mlflow_server_settings_are_the_tests(compose: dict) -> None:
    s = compose["services"]
    cmd = s["mlflow"]["command"]
    assert cmd[:2] == ["mlflow", "server"]
    assert option(cmd, "--artifacts-destination") == MLFLOW_ARTIFACTS
    assert option(cmd, "--workers") == "1"  # as tests/integration/servers.py's start_mlflow
    backend = urlparse(option(cmd, "--backend-store-uri"))
    pg = s["postgres"]["environment"]
    assert backend.scheme == "postgresql" and backend.hostname == "postgres" and backend.port == 5432
    assert backend.path == f"/{MLFLOW_DATABASE}" == f"/{pg['POSTGRES_DB']}"
    assert backend.username == pg["POSTGRES_USER"] == "postgres"  # the tests' cluster user (PostgresCluster.user)
    assert pg["POSTGRES_HOST_AUTH_METHOD"] == "trust" and "ports" not in s["postgres"]
    assert set(MLFLOW_SERVER_ENV) <= set(s["mlflow"]["environment"])
    assert published(s["mlflow"]) == {option(cmd, "--port")}


def test_object_store_bucket_and_endpoints_agree(compose: dict) -> None:
    s = compose["services"]
    store_port = option(s["s3"]["command"], "--address").lstrip(":")
    assert published(s["s3"]) == {store_port}
    assert s["s3-bucket"]["environment"]["BUCKET"] == BUCKET
    assert s["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == f"http://s3:{store_port}"
    assert urlparse(MLFLOW_ARTIFACTS).netloc == urlparse(DVC_REMOTE_URL).netloc == BUCKET
    assert DVC_REMOTE_URL == f"s3://{BUCKET}/{DVC_PREFIX}"
    # The same two keys everywhere, under the names botocore (DVC, MLflow) reads; MinIO's own names take them.
    for name in ("s3-bucket", "mlflow", "worker"):
        env = s[name]["environment"]
        assert set(S3_CREDENTIALS) <= set(env), name
        assert env["AWS_DEFAULT_REGION"] == S3_CREDENTIALS["AWS_DEFAULT_REGION"]
    minio = s["s3"]["environment"]
    assert "AWS_ACCESS_KEY_ID" in minio["MINIO_ROOT_USER"] and "AWS_SECRET_ACCESS_KEY" in minio["MINIO_ROOT_PASSWORD"]


def test_prefect_server_and_worker_agree(compose: dict) -> None:
    s = compose["services"]
    server = s["prefect"]["command"]
    assert server[:3] == ["prefect", "server", "start"] and published(s["prefect"]) == {option(server, "--port")}
    worker = s["worker"]
    assert option(worker["command"], "--pool") == WORK_POOL and option(worker["command"], "--type") == "process"
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    assert {d["work_pool"]["name"] for d in deployments if d["name"] == "scheduled"} == {WORK_POOL}
    env = worker["environment"]
    assert set(WORKER_ENV) <= set(env)
    assert env["PREFECT_API_URL"] == f"http://prefect:{option(server, '--port')}/api"
    assert env["MLFLOW_TRACKING_URI"] == f"http://mlflow:{option(s['mlflow']['command'], '--port')}"


def test_readme_team_section_runs_what_the_test_runs() -> None:
    """The README's commands are the two-machine test's: the remote, its endpoint, the server and the pulls."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Team set-up") :]
    section = section[: section.index("\n## ", 3)]
    for command in (
        f"dvc remote add -d {DVC_REMOTE_NAME} {DVC_REMOTE_URL}",
        f"dvc remote modify {DVC_REMOTE_NAME} endpointurl",
        f"--artifacts-destination {MLFLOW_ARTIFACTS}",
        f"prefect work-pool create {WORK_POOL} --type process",
        "prefect deploy --name scheduled",
        f"prefect worker start --pool {WORK_POOL}",
        "dvc pull",
        "dvc push --run-cache",
        "cxr predict",
        "cxr register",
        "cxr gate",
        "compose.yaml",
        'pip install -e ".[team]"',
    ):
        assert command in section, command
    assert re.search(r"cannot\s+be\s+started\s+here", section)
