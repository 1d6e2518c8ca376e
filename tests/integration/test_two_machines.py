"""A team's stack for real: machine A runs the pipeline as a Prefect deployment on a process worker, against an
MLflow server on PostgreSQL whose artifacts go to an S3 store, and pushes to a DVC remote in the same store;
machine B, a fresh clone with its own DVC cache, pulls, reproduces nothing, serves A's champion and registers a
challenger that the gate on A decides on. Every server on loopback (tests/integration/team.py)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

import pytest
import yaml
from conftest import REPO, make_project, tiny_params
from integration.servers import list_objects, postgres_unavailable, s3_unavailable, start_process, stop_process, tail
from integration.team import (
    BIN,
    BUCKET,
    DVC_PREFIX,
    DVC_REMOTE_NAME,
    DVC_REMOTE_URL,
    MLFLOW_PREFIX,
    WORK_POOL,
    team_stack,
)

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 600
NAME = "cxr-classifier"
# One epoch on 32 px images; floors at zero so that the first version, however weak, becomes the champion.
FAST = {
    "download": {"synthetic": {"size": 64}},
    "train": {"epochs": 1, "image_size": 32},
    "evaluate": {"n_boot": 20},
    "gradcam": {"per_class": 1},
    "drift": {"enabled": False},
    "registry": {"min_accuracy": 0.0, "min_macro_auc": 0.0, "min_sensitivity": {"COVID": 0.0}},
}


def sh(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def dvc(root: Path, env: dict[str, str], *args: str) -> str:
    return sh([sys.executable, "-m", "dvc", *args], root, env)


def cxr(root: Path, env: dict[str, str], *args: str) -> str:
    return sh([sys.executable, "-m", "cxr", *args], root, env)


def git(root: Path, *args: str) -> str:
    who = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return sh(["git", *args], root, {**os.environ, **who})


def cached_md5s(root: Path) -> set[str]:
    """The md5 of every object in a DVC cache (``files/md5/ab/cdef...`` is ``abcdef...``)."""
    base = root / ".dvc" / "cache" / "files" / "md5"
    return {p.parent.name + p.name for p in base.rglob("*") if p.is_file()}


def png_images(folder: Path, n: int = 3) -> list[Path]:
    """A few seeded grey images, new to both machines."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = folder / f"new{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (64, 64), dtype=np.uint8))
        out.append(path)
    return out


def probabilities(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return [{k: v for k, v in row.items() if k.startswith(("p_", "label"))} for row in csv.DictReader(fh)]


def run_deployment(root: Path, env: dict[str, str], log: Path) -> None:
    """Deploy prefect.yaml's `scheduled` from ``root`` and run it once on a process worker; wait until it ends."""
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    prefect = str(BIN / "prefect")
    sh([prefect, "work-pool", "create", WORK_POOL, "--type", "process"], root, env)
    sh([prefect, "--no-prompt", "deploy", "--name", "scheduled"], root, env)
    elsewhere = root.parent / "worker"
    elsewhere.mkdir()
    worker = start_process("prefect worker", [prefect, "worker", "start", "--pool", WORK_POOL], log, env, elsewhere)

    async def scenario(run_id: UUID):
        async with get_client() as client:
            run = await client.read_flow_run(run_id)
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while time.monotonic() < deadline:
                run = await client.read_flow_run(run.id)
                if run.state is not None and run.state.is_final():
                    return run
                await anyio.sleep(2)
            pytest.fail(f"flow run not finished after {RUN_TIMEOUT_S}s:\n{tail(log)}")

    try:
        out = sh([prefect, "deployment", "run", "cxr-pipeline/scheduled"], root, env)
        found = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
        assert found, out
        with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
            run = anyio.run(scenario, UUID(found.group(1)))
    finally:
        stop_process(worker)
    assert run.state.is_completed(), f"{run.state}\n{tail(log, 8000)}"


def test_a_teammate_reproduces_serves_and_challenges(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    for why in (postgres_unavailable(), s3_unavailable()):
        if why:
            pytest.skip(why)
    pytest.importorskip("psycopg2", reason="psycopg2-binary is needed for a PostgreSQL backend store")
    started = time.monotonic()
    with team_stack(tmp_path / "servers") as stack:
        env = stack.env
        # --- machine A: the project with its remote in the store, committed; the pipeline as a deployment run.
        a = make_project(tmp_path / "a", tiny_params(**FAST))
        shutil.copy(REPO / ".gitignore", a / ".gitignore")
        shutil.copy(REPO / "prefect.yaml", a / "prefect.yaml")
        dvc(a, env, "remote", "add", "-d", DVC_REMOTE_NAME, DVC_REMOTE_URL)
        dvc(a, env, "remote", "modify", DVC_REMOTE_NAME, "endpointurl", stack.s3.url)
        git(a, "add", "-A")
        git(a, "commit", "-qm", "the team's DVC remote")
        run_deployment(a, env, tmp_path / "worker.log")
        git(a, "add", "-A")
        git(a, "commit", "-qm", "A's run: dvc.lock, data.dvc and the metrics")
        assert "up to date" in dvc(a, env, "status")
        assert f"Cache and remote '{DVC_REMOTE_NAME}' are in sync" in dvc(a, env, "status", "--cloud")

        # The bucket holds what DVC says, in its cache's layout (files/md5/<2 hex>/<30 hex>): the data version, every
        # cached output in dvc.lock, the files each folder's .dir listing names, and the run-cache.
        objects = list_objects(stack.s3.url, BUCKET)
        pushed = {k.split("/", 3)[3].replace("/", "") for k in objects if k.startswith(f"{DVC_PREFIX}/files/md5/")}
        assert pushed <= cached_md5s(a)
        lock = yaml.safe_load((a / "dvc.lock").read_text())["stages"]
        outs = {o["path"]: o["md5"] for stage in lock.values() for o in stage.get("outs", [])}
        data_md5 = yaml.safe_load((a / "data.dvc").read_text())["outs"][0]["md5"]
        for md5 in (data_md5, outs["models/best.pt"], outs["data/split/manifest.csv"], outs["reports/gradcam"]):
            assert md5 in pushed, md5
        for listing in (md5 for md5 in pushed if md5.endswith(".dir")):
            entries = json.loads((a / ".dvc" / "cache" / "files" / "md5" / listing[:2] / listing[2:]).read_text())
            assert {e["md5"] for e in entries} <= pushed, listing
        assert any(k.startswith(f"{DVC_PREFIX}/runs/") for k in objects), "no run-cache in the remote"

        # ... and what MLflow says: the run's artifacts and the model's files under mlflow/.
        client = MlflowClient(stack.mlflow.url)
        [found] = client.search_model_versions(f"name='{NAME}'")
        v1 = client.get_model_version(NAME, found.version)
        assert "champion" in v1.aliases
        run = client.get_run(v1.run_id)
        listing = json.loads(sh([str(BIN / "mlflow"), "artifacts", "list", "--run-id", v1.run_id], a, env))
        exp_prefix = f"{MLFLOW_PREFIX}/{run.info.experiment_id}/{v1.run_id}/artifacts/"
        in_bucket = {k[len(exp_prefix) :]: size for k, size in objects.items() if k.startswith(exp_prefix)}
        assert {e["path"] for e in listing} == {k.split("/")[0] for k in in_bucket}
        assert {"evaluation", "gradcam", "pipeline", "model_card.md"} <= {e["path"] for e in listing}

        def walk(path: str | None = None) -> dict[str, int]:
            found: dict[str, int] = {}
            for info in client.list_artifacts(v1.run_id, path):
                found.update(walk(info.path) if info.is_dir else {info.path: info.file_size})
            return found

        assert walk() == in_bucket  # every file, at its size: no more, no less
        model_id = v1.source.removeprefix("models:/")  # the logged model the version was made from
        model_prefix = f"{MLFLOW_PREFIX}/{run.info.experiment_id}/models/{model_id}/artifacts/"
        assert f"{model_prefix}MLmodel" in objects, sorted(k for k in objects if "/models/" in k)[:20]

        # --- machine B: a fresh clone at A's commit, its own cache; data and outputs come from the remote.
        b = tmp_path / "b"
        sh(["git", "clone", "-q", str(a), str(b)], tmp_path, env)
        assert git(b, "rev-parse", "HEAD") == git(a, "rev-parse", "HEAD")
        assert not (b / ".dvc" / "cache").exists()
        dvc(b, env, "pull")
        assert "up to date" in dvc(b, env, "status")
        assert "Running stage" not in dvc(b, env, "repro")
        assert cached_md5s(b) == pushed  # what B needed is what A pushed: no more, no less
        for out in ("models/best.pt", "reports/metrics_full.json", "reports/metrics/test.json"):
            assert (b / out).read_bytes() == (a / out).read_bytes(), out

        # The champion, loaded from the store through the tracking server, answers on B as on A.
        images = png_images(tmp_path / "new")
        model_uri = f"models:/{NAME}@champion"
        cxr(a, env, "predict", *map(str, images), "--model", model_uri, "--out", str(tmp_path / "a.csv"))
        cxr(b, env, "predict", *map(str, images), "--model", model_uri, "--out", str(tmp_path / "b.csv"))
        assert probabilities(tmp_path / "b.csv") == probabilities(tmp_path / "a.csv")

        # --- B changes a param: trains, pushes, registers; A's gate decides on the new version.
        params = yaml.safe_load((b / "params.yaml").read_text())
        params["train"]["lr"] = params["train"]["lr"] * 2
        (b / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        out = dvc(b, env, "repro")
        assert "Running stage 'train'" in out and "Running stage 'split'" not in out
        dvc(b, env, "push", "--run-cache")
        git(b, "commit", "-qam", "B: a higher learning rate")
        registered = cxr(b, env, "register")
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{NAME}'"))
        assert versions == [int(v1.version), int(v1.version) + 1], registered
        v2 = str(versions[-1])
        assert client.get_model_version(NAME, v2).tags["git_commit"] == git(b, "rev-parse", "HEAD").strip()
        gate = subprocess.run(
            [sys.executable, "-m", "cxr", "gate", v2], cwd=a, env=env, capture_output=True, text=True, timeout=600
        )
        decided = client.get_model_version(NAME, v2)
        assert decided.tags["gate.decision"] in ("promote", "reject"), gate.stdout + gate.stderr
        assert gate.returncode == (0 if decided.tags["gate.decision"] == "promote" else 3), gate.stdout + gate.stderr
        assert "challenger" in decided.aliases
        champion = "2" if decided.tags["gate.decision"] == "promote" else str(v1.version)
        assert "champion" in client.get_model_version(NAME, v2 if champion == "2" else v1.version).aliases
        # B's new outputs reached the store too: nothing of B's dvc.lock is missing from the remote.
        assert f"Cache and remote '{DVC_REMOTE_NAME}' are in sync" in dvc(b, env, "status", "--cloud")
    print(f"\ntwo-machine test: {time.monotonic() - started:.0f} s")
