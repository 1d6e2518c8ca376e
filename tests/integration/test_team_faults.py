"""Faults in the shared stack: each is a clear error naming the endpoint, leaves nothing half-written, and is
retried where it can clear (the object store down during the download's push or during registration, no or
wrong credentials, a bucket that does not exist, the tracking server restarted between two runs)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import deep_update, make_project, tiny_params
from integration.servers import (
    S3_CREDENTIALS,
    Process,
    create_bucket,
    free_port,
    list_objects,
    postgres_cluster,
    postgres_unavailable,
    s3_unavailable,
    start_mlflow,
    start_process,
    start_s3,
    stop_process,
    wait_for_http,
)
from integration.team import BUCKET, DVC_PREFIX, MLFLOW_ARTIFACTS, MLFLOW_DATABASE

from cxr.ops.dvc import dvc_env

pytestmark = pytest.mark.slow

NAME = "cxr-classifier"
FAST = {
    "download": {"synthetic": {"size": 64}},
    "train": {"epochs": 1, "image_size": 32},
    "evaluate": {"n_boot": 20},
    "drift": {"enabled": False},
}


@pytest.fixture(autouse=True)
def _needs_the_team_extra() -> None:
    why = s3_unavailable()
    if why:
        pytest.skip(why)


@pytest.fixture
def s3(tmp_path: Path, monkeypatch) -> Iterator[Process]:
    """A fresh S3 store with the bucket; the credentials in this process's environment (DVC's subprocesses)."""
    for key, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    proc = start_s3(tmp_path / "s3.log")
    create_bucket(proc.url, BUCKET)
    yield proc
    stop_process(proc, timeout_s=5)


def dvc(root: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True, env=dvc_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def project_with_remote(root: Path, endpoint: str, url: str = f"s3://{BUCKET}/{DVC_PREFIX}", **changes) -> Path:
    root = make_project(root, deep_update(tiny_params(**FAST), changes))
    dvc(root, "remote", "add", "-d", "store", url)
    dvc(root, "remote", "modify", "store", "endpointurl", endpoint)
    return root


def download_in_process(root: Path):
    from cxr.core.config import load_settings
    from cxr.data.download import download

    s = load_settings(root / "params.yaml")
    return download(s.base, s.download, s.paths(root))


def restart(proc: Process, log: Path) -> Process:
    """The same S3 store's port, served again (moto keeps buckets in memory: the store comes back empty)."""
    port = int(proc.url.rsplit(":", 1)[1])
    stop_process(proc, timeout_s=5)
    return start_s3(log, port)


# --- the DVC remote -----------------------------------------------------------------------------------------


def test_store_down_during_the_downloads_push_keeps_the_version_and_the_next_run_pushes(
    s3: Process, tmp_path: Path, capsys
) -> None:
    from cxr.ops.dvc import RemoteUnreachable
    from tasks.pipeline_tasks import is_transient

    root = project_with_remote(tmp_path / "p", s3.url)
    endpoint = s3.url
    stop_process(s3, timeout_s=5)
    with pytest.raises(RemoteUnreachable) as info:
        download_in_process(root)
    message = str(info.value)
    print(f"\n[store down during the download's push]\n{message}")
    assert endpoint in message and "s3://cxr/dvc" in message and "unreachable" in message
    assert "kept in data.dvc" in message
    assert is_transient(info.value)  # the download task retries it (2 retries, 10 s and 60 s apart)
    # The new data version stands locally: recorded, in the cache, checked out.
    version = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]
    assert (root / ".dvc" / "cache" / "files" / "md5" / version[:2] / version[2:]).is_file()
    assert "up to date" in dvc(root, "status", "data.dvc")

    # The store is back: the next download has nothing to fetch, and pushes.
    back = start_s3(tmp_path / "s3-again.log", int(endpoint.rsplit(":", 1)[1]))
    try:
        create_bucket(back.url, BUCKET)
        again = download_in_process(root)
        assert again.skipped and again.data_version == version
        keys = list_objects(back.url, BUCKET, f"{DVC_PREFIX}/files/md5/")
        assert f"{DVC_PREFIX}/files/md5/{version[:2]}/{version[2:]}" in keys
    finally:
        stop_process(back, timeout_s=5)


def test_a_bucket_that_does_not_exist_is_named_and_not_retried(s3: Process, tmp_path: Path) -> None:
    from cxr.ops.dvc import RemoteError, RemoteUnreachable, push
    from tasks.pipeline_tasks import is_transient

    root = project_with_remote(tmp_path / "p", s3.url, url="s3://no-such-bucket/dvc")
    (root / "notes.txt").write_text("a file to push\n")
    dvc(root, "add", "-q", "notes.txt")
    with pytest.raises(RemoteError) as info:
        push(root)
    print(f"\n[bucket that does not exist]\n{info.value}")
    assert not isinstance(info.value, RemoteUnreachable) and not is_transient(info.value)
    assert s3.url in str(info.value) and "s3://no-such-bucket/dvc" in str(info.value)
    assert "bucket does not exist" in str(info.value)


def test_missing_credentials_are_named_and_not_retried(s3: Process, tmp_path: Path, monkeypatch) -> None:
    from cxr.ops.dvc import RemoteError, push
    from tasks.pipeline_tasks import is_transient

    root = project_with_remote(tmp_path / "p", s3.url)
    (root / "notes.txt").write_text("a file to push\n")
    dvc(root, "add", "-q", "notes.txt")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(RemoteError) as info:
        push(root)
    print(f"\n[no credentials]\n{info.value}")
    assert not is_transient(info.value)
    assert s3.url in str(info.value) and "Unable to locate credentials" in str(info.value)


def test_wrong_credentials_are_named_and_not_retried(tmp_path: Path, monkeypatch) -> None:
    """A store that checks keys (moto with authentication on) refuses unknown ones."""
    from cxr.ops.dvc import RemoteError, push
    from tasks.pipeline_tasks import is_transient

    for key, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    port = free_port()
    # The first request (creating the bucket) goes through; every later one is checked against IAM's keys.
    proc = start_process(
        "s3 (moto, authenticating)",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        tmp_path / "s3.log",
        {**S3_CREDENTIALS, "INITIAL_NO_AUTH_ACTION_COUNT": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/moto-api/", 60, proc)
        create_bucket(url, BUCKET)
        root = project_with_remote(tmp_path / "p", url)
        (root / "notes.txt").write_text("a file to push\n")
        dvc(root, "add", "-q", "notes.txt")
        with pytest.raises(RemoteError) as info:
            push(root)
    finally:
        stop_process(proc, timeout_s=5)
    print(f"\n[wrong credentials]\n{info.value}")
    assert not is_transient(info.value)
    assert url in str(info.value) and "Forbidden" in str(info.value)


# --- the MLflow server's artifact store ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(module_tmp: Path) -> Path:
    """A project whose pipeline ran up to evaluation (what registration needs), without a remote."""
    root = make_project(module_tmp / "trained", tiny_params(**FAST))
    subprocess.run([sys.executable, "-m", "cxr", "download"], cwd=root, check=True, capture_output=True)
    dvc(root, "repro", "evaluate")
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    return root


@pytest.fixture
def tracking(tmp_path: Path, s3: Process, monkeypatch) -> Iterator[dict]:
    """PostgreSQL, and an MLflow server whose artifacts go to the S3 store; MLFLOW_TRACKING_URI points at it."""
    import mlflow

    why = postgres_unavailable()
    if why:
        pytest.skip(why)
    pytest.importorskip("psycopg2", reason="psycopg2-binary is needed for a PostgreSQL backend store")
    with postgres_cluster() as pg:
        backend = pg.create_database(MLFLOW_DATABASE)
        env = {"MLFLOW_S3_ENDPOINT_URL": s3.url, **S3_CREDENTIALS}
        server = start_mlflow(backend, MLFLOW_ARTIFACTS, tmp_path / "mlflow.log", env=env)
        # One retry without back-off: the client's default (7 retries, minutes of back-off) would only delay the error.
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        state = {"s3": s3, "mlflow": server, "backend": backend, "env": env, "log": tmp_path / "mlflow.log"}
        try:
            yield state
        finally:
            stop_process(state["mlflow"], timeout_s=5)
            if state["s3"] is not s3:
                stop_process(state["s3"], timeout_s=5)
            mlflow.set_tracking_uri(None)


def register(root: Path, force: bool = False):
    from cxr.core.config import load_settings
    from cxr.registry.register import register as step

    s = load_settings(root / "params.yaml")
    return step(s, s.paths(root), root / "params.yaml", force=force)


def test_store_down_during_registration_leaves_no_version(trained: Path, tracking: dict, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from cxr.registry.register import ArtifactStoreUnavailable
    from tasks.pipeline_tasks import is_transient

    client = MlflowClient(tracking["mlflow"].url)
    s3 = tracking["s3"]
    endpoint = s3.url
    stop_process(s3, timeout_s=5)
    with pytest.raises(ArtifactStoreUnavailable) as info:
        register(trained)
    print(f"\n[store down during registration]\n{info.value}")
    message = str(info.value)
    assert tracking["mlflow"].url in message and "no model version was registered" in message
    assert is_transient(info.value)  # the register task retries it
    assert client.search_model_versions(f"name='{NAME}'") == []
    [run] = client.search_runs([client.get_experiment_by_name("cxr").experiment_id])
    assert run.info.status == "FAILED"

    # The store is back (empty, as moto restarts): the next registration makes one complete version.
    tracking["s3"] = back = start_s3(tmp_path / "s3-again.log", int(endpoint.rsplit(":", 1)[1]))
    create_bucket(back.url, BUCKET)
    res = register(trained)
    [found] = client.search_model_versions(f"name='{NAME}'")
    version = client.get_model_version(NAME, found.version)
    assert version.version == res.version and version.run_id == res.run_id
    keys = list_objects(back.url, BUCKET, "mlflow/")
    model_id = version.source.removeprefix("models:/")  # the logged model the version was made from
    assert any(k.endswith(f"/models/{model_id}/artifacts/MLmodel") for k in keys), (version.source, sorted(keys))


def test_tracking_server_restarted_between_two_runs_loses_nothing(trained: Path, tracking: dict) -> None:
    import mlflow
    from mlflow import MlflowClient

    first = register(trained, force=True)
    server: Process = tracking["mlflow"]
    port = int(server.url.rsplit(":", 1)[1])
    stop_process(server, timeout_s=5)
    tracking["mlflow"] = server = start_mlflow(
        tracking["backend"], MLFLOW_ARTIFACTS, tracking["log"], port=port, env=tracking["env"]
    )
    client = MlflowClient(server.url)
    assert client.get_model_version(NAME, first.version).run_id == first.run_id
    assert {a.path for a in client.list_artifacts(first.run_id)} >= {"evaluation", "pipeline", "model_card.md"}
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/{first.version}")
    assert model.metadata is not None
    second = register(trained, force=True)
    assert int(second.version) == int(first.version) + 1
    assert [v.version for v in client.search_model_versions(f"name='{NAME}'")].count(first.version) == 1


def test_an_artifact_bucket_that_does_not_exist_leaves_no_version(
    trained: Path, s3: Process, tmp_path: Path, monkeypatch
) -> None:
    from mlflow import MlflowClient

    from cxr.registry.register import ArtifactStoreUnavailable

    why = postgres_unavailable()
    if why:
        pytest.skip(why)
    pytest.importorskip("psycopg2", reason="psycopg2-binary is needed for a PostgreSQL backend store")
    with postgres_cluster() as pg:
        backend = pg.create_database(MLFLOW_DATABASE)
        env = {"MLFLOW_S3_ENDPOINT_URL": s3.url, **S3_CREDENTIALS}
        server = start_mlflow(backend, "s3://no-such-bucket/mlflow", tmp_path / "mlflow.log", env=env)
        try:
            monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
            monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
            with pytest.raises(ArtifactStoreUnavailable) as info:
                register(trained)
            print(f"\n[artifact bucket that does not exist]\n{info.value}")
            assert server.url in str(info.value) and "no model version was registered" in str(info.value)
            assert MlflowClient(server.url).search_model_versions(f"name='{NAME}'") == []
            assert "NoSuchBucket" in (tmp_path / "mlflow.log").read_text()  # the server's log says which
        finally:
            stop_process(server, timeout_s=5)
            import mlflow

            mlflow.set_tracking_uri(None)
