"""The scheduled deployment for real: a Prefect server and a process worker on loopback run prefect.yaml's deployment.

Also, against the same server: a run that fails half-way (training on a missing GPU) ends Failed, leaves the
registry and the DVC cache as they were, and posts to the failure webhook; retries happen on transient errors only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from conftest import REPO, deep_update, make_project, tiny_params
from integration.servers import Process, running_prefect_server, start_process, stop_process, tail

from cxr.ops.dvc import dvc_env

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
SERVER_START_S = 240  # a cold server migrates its database first; slow on a shared 2-core machine
RUN_TIMEOUT_S = 480
# Smaller than tiny: one epoch, small images, few bootstrap rounds; registration is covered by test_pipeline.py.
# Most of a stage's time is its process importing torch; the rest shrinks with the images.
FAST = {
    "download": {"synthetic": {"size": 64}},
    "train": {"epochs": 1, "image_size": 32},
    "evaluate": {"n_boot": 20},
    "gradcam": {"per_class": 1},
}


def fast_params(**changes) -> dict:
    """tiny_params, shrunk further, with ``changes`` merged in."""
    return deep_update(tiny_params(**FAST), changes)


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_server(module_tmp: Path) -> Iterator[dict[str, str]]:
    """A real ``prefect server start`` on 127.0.0.1 with its own PREFECT_HOME; yields the clients' environment."""
    home = module_tmp / "prefect-home"
    home.mkdir()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "DO_NOT_TRACK": "1",
        "MLFLOW_ENABLE_TELEMETRY": "false",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    # Empty, not removed: start_process lays this over os.environ. Empty means unset to both readers.
    env.update(MLFLOW_TRACKING_URI="", CXR_NOTIFY_WEBHOOK="")
    with running_prefect_server(home, env, SERVER_START_S) as api:
        yield {**env, "PREFECT_API_URL": api}


@pytest.fixture
def api(prefect_server):
    """In-process Prefect clients and flows talk to the test server."""
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server["PREFECT_API_URL"]}):
        yield prefect_server
        APILogWorker.drain_all(timeout=10)  # ship this test's run logs while the server is still up


class _Recorder(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.received.append(json.loads(body))  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[ThreadingHTTPServer]:
    """A failure webhook on 127.0.0.1 that records the JSON it receives."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.received = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 180) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def cache_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in (root / ".dvc" / "cache").rglob("*") if p.is_file()}


def lock_stages(root: Path) -> dict:
    lock = root / "dvc.lock"
    return (yaml.safe_load(lock.read_text()) or {}).get("stages", {}) if lock.is_file() else {}


async def _wait_final(client, run_id, timeout_s: float, log: Path):
    import anyio

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = await client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            return run
        await anyio.sleep(2)
    pytest.fail(f"flow run {run_id} not finished after {timeout_s}s (state {run.state}):\n{tail(log)}")


# --- the tests ---------------------------------------------------------------------------------


def test_scheduled_deployment_runs_on_a_process_worker(api, tmp_path: Path) -> None:
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy
    from prefect.client.schemas.schedules import CronSchedule

    env = api
    root = make_project(tmp_path / "project", fast_params(registry={"enabled": False}))
    shutil.copy(REPO / "prefect.yaml", root / "prefect.yaml")
    prefect = str(BIN / "prefect")
    run_cli([prefect, "work-pool", "create", "cxr-process", "--type", "process"], env, root)
    out = run_cli([prefect, "--no-prompt", "deploy", "--name", "scheduled"], env, root)
    assert "cxr-pipeline/scheduled" in out

    # The worker starts elsewhere: only the deployment's pull step puts the run in the project.
    elsewhere = tmp_path / "worker"
    elsewhere.mkdir()
    worker_log = tmp_path / "worker.log"
    worker: Process = start_process(
        "prefect worker",
        [prefect, "worker", "start", "--pool", "cxr-process", "--name", "test-worker"],
        worker_log,
        env,
        elsewhere,
    )

    async def scenario():
        async with get_client() as client:
            dep = await client.read_deployment_by_name("cxr-pipeline/scheduled")
            # What prefect.yaml asked for, read back from the API.
            assert len(dep.schedules) == 1
            sched = dep.schedules[0]
            assert isinstance(sched.schedule, CronSchedule) and sched.active
            assert (sched.schedule.cron, sched.schedule.timezone) == ("0 3 * * 1", "UTC")
            assert dep.global_concurrency_limit is not None and dep.global_concurrency_limit.limit == 1
            assert dep.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.ENQUEUE
            assert dep.work_pool_name == "cxr-process"
            assert dep.parameters == {"params": "params.yaml", "root": "."}
            assert {"cxr", "scheduled"} <= set(dep.tags)
            assert dep.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(root)}}]
            assert dep.entrypoint == "flows/pipeline.py:pipeline"

            run = await client.create_flow_run_from_deployment(dep.id)
            run = await _wait_final(client, run.id, RUN_TIMEOUT_S, worker_log)
            assert run.state.is_completed(), f"{run.state}\n{tail(worker_log)}"
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
            return run, [log.message for log in logs], {a.key: a for a in artifacts}

    try:
        run, messages, artifacts = anyio.run(scenario)
    finally:
        stop_process(worker)

    # The DVC stages ran in the project, through DVC, and their output reached the run's logs.
    assert "Running stage 'train':" in messages and "> python -m cxr train" in messages
    assert any("epoch 1/1" in m for m in messages)
    from cxr.ops.dvc import pipeline_stages

    assert set(lock_stages(root)) == set(pipeline_stages(root)) == {"split", "train", "evaluate", "gradcam", "report"}
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status"], cwd=root, capture_output=True, text=True, env=dvc_env()
    )
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr
    assert "acc" in json.loads((root / "reports" / "metrics" / "test.json").read_text())
    assert not (elsewhere / "dvc.lock").exists() and not (elsewhere / "reports").exists()
    # Both artifacts, under their fixed keys; the data report has the split's counts.
    assert {"cxr-data-report", "cxr-test-metrics"} <= set(artifacts)
    report = json.loads((root / "data" / "split" / "report.json").read_text())
    assert f"| COVID | {report['counts']['COVID']['train']} |" in artifacts["cxr-data-report"].data
    assert "| Accuracy |" in artifacts["cxr-test-metrics"].data


def test_failed_run_changes_neither_registry_nor_cache_and_notifies(api, tmp_path: Path, webhook, monkeypatch) -> None:
    import mlflow
    import torch
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.pipeline import pipeline

    if torch.cuda.is_available():
        pytest.skip("training on 'cuda' fails on purpose only where there is no CUDA device")
    root = make_project(tmp_path / "project", fast_params(train={"device": "cuda"}))
    # The data exists before the run: the cache then holds exactly the raw data. (In process: `cxr download`'s
    # function; the flow's own download then finds it up to date.)
    from cxr.core.config import load_settings
    from cxr.data.download import download

    s = load_settings(root / "params.yaml")
    download(s.base, s.download, s.paths(root))
    before = cache_files(root)
    assert before and not (root / "dvc.lock").exists()

    monkeypatch.setenv("CXR_NOTIFY_WEBHOOK", f"http://127.0.0.1:{webhook.server_port}/hook")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    state = pipeline(params="params.yaml", root=str(root), return_state=True)

    # The run failed in training, after a successful split.
    assert state.is_failed()
    assert "train" in state.message and "cuda" in state.message.lower()
    stages = lock_stages(root)
    assert set(stages) == {"split"}  # nothing recorded for train; evaluate/gradcam never ran
    # The cache gained what the completed split produced (its cached outs) and nothing from the failed
    # training: no checkpoint, no history, no run-cache entry for train.
    added = cache_files(root) - before
    # Outs with `cache: false` (the data report, kept in git) never enter the cache.
    report = yaml.safe_load((root / "params.yaml").read_text())["base"]["paths"]["data_report"]
    split_outs = {
        f".dvc/cache/files/md5/{o['md5'][:2]}/{o['md5'][2:]}" for o in stages["split"]["outs"] if o["path"] != report
    }
    assert {p for p in added if p.startswith(".dvc/cache/files/")} == split_outs
    # No run-cache entry at all: DVC keeps none for a stage with an uncached out (the split's data report),
    # and none for a stage that failed (train).
    assert not added - split_outs
    assert not (root / "models" / "best.pt").exists()
    # The registry was never touched.
    db = root / "mlflow.db"
    if db.exists():
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
        assert client.search_model_versions() == []
    assert not (root / "mlartifacts").exists()
    # The hook posted once, naming the run and the failure.
    assert len(webhook.received) == 1, webhook.received
    body = webhook.received[0]
    assert body["flow"] == "cxr-pipeline" and body["state"] == "Failed"
    assert "cuda" in body["message"].lower()

    async def read_back():
        async with get_client() as client:
            run_id = state.state_details.flow_run_id
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
            tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
            return runs[0], tasks

    import anyio

    run, tasks = anyio.run(read_back)
    assert run.state.is_failed() and body["flow_run_id"] == str(run.id)
    train = [t for t in tasks if t.name.startswith("dvc repro train")]
    # A deterministic stage failure is not retried (the task allows one retry for a busy DVC lock only).
    assert len(train) == 1 and train[0].state.is_failed() and train[0].run_count == 1
    assert not any(t.name.startswith(("dvc repro evaluate", "register")) for t in tasks)


def test_retries_happen_on_transient_errors_only(api) -> None:
    from prefect import flow, task

    from tasks.pipeline_tasks import _transient

    calls = {"flaky": 0, "bad": 0}

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=_transient)
    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise ConnectionError("connection reset by peer")
        return "ok"

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=_transient)
    def bad() -> None:
        calls["bad"] += 1
        raise ValueError("params.yaml: train.epochs: must be at least 1")

    @flow
    def both() -> str:
        value = flaky()
        bad()
        return value

    state = both(return_state=True)
    assert state.is_failed()
    assert calls == {"flaky": 2, "bad": 1}
