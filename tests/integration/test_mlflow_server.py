"""The registry workflow against a real MLflow tracking server on a throw-away PostgreSQL cluster (loopback only)."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import threading
import time
from pathlib import Path

import pytest
from conftest import label_reading_model
from integration.servers import closed_port, mlflow_server, postgres_cluster, postgres_unavailable

pytestmark = pytest.mark.slow

NAME = "cxr-classifier"
CLASSES = ("COVID", "Normal")
N_TEST = 120
GOOD = {"test/accuracy": 0.9, "test/macro_auc": 0.95, "test/COVID/sensitivity": 0.9}


def _needs_psycopg2() -> None:
    pytest.importorskip("psycopg2", reason="psycopg2-binary is needed for a PostgreSQL backend store")


@pytest.fixture(scope="module")
def pg():
    """A PostgreSQL cluster on a free loopback port with a database ``mlflow``; stopped by PID and removed."""
    why = postgres_unavailable()
    if why:
        pytest.skip(why)
    _needs_psycopg2()
    with postgres_cluster() as cluster:
        cluster.create_database("mlflow")
        yield cluster


@pytest.fixture(scope="module")
def server(pg, module_tmp: Path):
    """``mlflow server`` on the cluster, artifacts proxied to a tmp folder; stopped by PID (process group)."""
    root = module_tmp
    with mlflow_server(pg.url("mlflow"), root / "artifacts", root / "mlflow.log") as proc:
        yield proc


@pytest.fixture
def client(server, monkeypatch):
    """An MlflowClient on the server, with the global tracking URI pointed at it for the test."""
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    mlflow.set_tracking_uri(server.url)
    yield MlflowClient(server.url)
    mlflow.set_tracking_uri(None)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def manifest(tmp: Path) -> tuple[Path, Path, list[dict[str, str]]]:
    """A split manifest (test split of N_TEST images) and a raw folder whose 'images' hold their own label."""
    raw = tmp / "raw"
    rows = []
    for i in range(N_TEST):
        label = CLASSES[i % 2]
        path = f"{label}/images/x{i}.png"
        (raw / path).parent.mkdir(parents=True, exist_ok=True)
        (raw / path).write_text(label)
        rows.append(
            {
                "path": path,
                "folder": label,
                "label": label,
                "split": "test",
                "sha256": sha(path),
                "group": str(i),
                "source": "kaggle",
            }
        )
    out = tmp / "manifest.csv"
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out, raw, rows


def register_version(
    tmp: Path,
    rows,
    n_right: int,
    tags: dict[str, str] | None = None,
    metrics=GOOD,
    model: bool = False,
    name: str = NAME,
) -> str:
    """One run like the register step's (lineage tags, test metrics, evaluation/predictions.csv) and a new version."""
    import mlflow

    exp = mlflow.set_experiment("cxr-it")
    tags = {"data_source": "kaggle", "data_version": "dv1", "git_commit": "abc", **(tags or {})}
    preds = tmp / "predictions.csv"
    with preds.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "actual", "predicted", *[f"p_{c}" for c in CLASSES]])
        for i, r in enumerate(rows):
            pred = r["label"] if i < n_right else CLASSES[1 - CLASSES.index(r["label"])]
            w.writerow([r["path"], r["label"], pred, *[float(pred == c) for c in CLASSES]])
    with mlflow.start_run(experiment_id=exp.experiment_id) as run:
        mlflow.set_tags(tags)
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(preds), "evaluation")
        if model:
            uri = mlflow.pyfunc.log_model(
                name="model", python_model=label_reading_model(CLASSES), pip_requirements=["mlflow"]
            ).model_uri
            return str(mlflow.register_model(uri, name, tags=tags).version)
    # No model needed where only the recorded predictions are compared: a version pointing at the run's files.
    client = mlflow.MlflowClient()
    if not client.search_registered_models(f"name='{name}'"):
        with contextlib.suppress(mlflow.exceptions.MlflowException):  # a concurrent creator won
            client.create_registered_model(name)
    return str(
        client.create_model_version(
            name, f"{run.info.artifact_uri}/evaluation", run_id=run.info.run_id, tags=tags
        ).version
    )


def test_gate_promotion_rollback_and_serving_by_alias(client, tmp_path: Path) -> None:
    import mlflow
    import pandas as pd

    from cxr.core.sections import Registry
    from cxr.ops.tracking import CHAMPION, PREVIOUS
    from cxr.registry.aliases import DataSourceMismatch, GateRefused, alias_version, audit_log
    from cxr.registry.gate import register_challenger
    from cxr.registry.promote import promote, rollback

    cfg = Registry(
        min_accuracy=0.5,
        min_macro_auc=0.7,
        min_sensitivity={"COVID": 0.5},
        margin=0.02,
        test="mcnemar",
        auto_promote=True,
    )
    path, raw, rows = manifest(tmp_path)
    v1 = register_version(tmp_path, rows, 100, model=True)
    first = register_challenger(client, NAME, v1, cfg, manifest=path, raw=raw)
    assert first.promotion is not None and alias_version(client, NAME, CHAMPION) == v1
    assert client.get_registered_model(NAME).tags["data_source"] == "kaggle"

    # The champion serves by alias, under the cxr.serving.pyfunc contract.
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    out = model.predict(pd.DataFrame({"image": [str(raw / rows[0]["path"]), str(raw / rows[1]["path"])]}))
    assert list(out["label"]) == [rows[0]["label"], rows[1]["label"]]

    worse = register_version(tmp_path, rows, 80)
    r = register_challenger(client, NAME, worse, cfg, manifest=path, raw=raw)
    assert not r.decision.promote and r.decision.checks["comparison"]["split"] == "same"
    assert client.get_model_version(NAME, worse).tags["gate.decision"] == "reject"
    assert alias_version(client, NAME, CHAMPION) == v1

    # A champion scored on another split (other data version, no hashes) is re-scored from the registry.
    rescored = register_version(tmp_path, rows, 118, tags={"data_version": "dv2"})
    r = register_challenger(client, NAME, rescored, cfg, manifest=path, raw=raw)
    assert r.decision.checks["comparison"]["split"] == "rescored"
    # The stand-in champion is right on every image, so 118/120 is a 1.7% loss with 2 discordant pairs.
    assert r.decision.checks["comparison"]["accuracy_champion"] == 1.0
    assert r.decision.promote and alias_version(client, NAME, CHAMPION) == rescored

    synthetic = register_version(tmp_path, rows, 120, tags={"data_source": "synthetic"})
    with pytest.raises(DataSourceMismatch, match="trained on 'synthetic' data"):
        promote(client, NAME, synthetic, "shortcut", "mallory")

    with pytest.raises(GateRefused, match="--force"):
        promote(client, NAME, worse, "manual override for a site test", "alice")
    promote(client, NAME, worse, "manual override for a site test", "alice", force=True)
    assert client.get_model_version(NAME, worse).tags["promotion.forced"] == "true"
    assert alias_version(client, NAME, PREVIOUS) == rescored
    rollback(client, NAME, "site test over", "alice")
    assert alias_version(client, NAME, CHAMPION) == rescored
    assert alias_version(client, NAME, PREVIOUS) == v1
    events = [(e["event"], e["version"]) for e in audit_log(client, NAME)]
    assert events[-2:] == [("promote", worse), ("rollback", rescored)]
    assert client.get_model_version(NAME, worse).tags["rollback.reason"] == "site test over"


@pytest.mark.parametrize("lock", [True, False], ids=["locked", "upsert-only"])
def test_two_promotions_at_once_leave_exactly_one_champion(client, tmp_path: Path, lock: bool) -> None:
    from mlflow import MlflowClient

    from cxr.ops.tracking import CHAMPION
    from cxr.registry.aliases import alias_version
    from cxr.registry.promote import promote

    name = f"race-{'locked' if lock else 'unlocked'}"
    _, _, rows = manifest(tmp_path)
    seen_none = []
    for round_ in range(2):
        versions = [register_version(tmp_path, rows, 100, name=name) for _ in range(2)]
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []
        stop = threading.Event()

        def watch(stop: threading.Event = stop, round_: int = round_) -> None:
            # Once there is a champion, no interleaving of promotions may leave the model without one.
            watcher = MlflowClient(client.tracking_uri)
            while not stop.is_set():
                if alias_version(watcher, name, CHAMPION) is None:
                    seen_none.append(round_)
                time.sleep(0.01)

        def go(v: str, barrier: threading.Barrier = barrier, errors: list = errors) -> None:
            try:
                own = MlflowClient(client.tracking_uri)  # one client per promoter, as two processes would have
                barrier.wait()
                promote(own, name, v, "race", f"actor-{v}", lock=lock)
            except BaseException as err:  # noqa: BLE001 - asserted below
                errors.append(err)

        threads = [threading.Thread(target=go, args=(v,)) for v in versions]
        watcher = threading.Thread(target=watch) if round_ > 0 else None
        for t in threads + ([watcher] if watcher else []):
            t.start()
        for t in threads:
            t.join(120)
        stop.set()
        if watcher:
            watcher.join(30)
        assert not errors, errors
        assert alias_version(client, name, CHAMPION) in versions
        every = [str(mv.version) for mv in client.search_model_versions(f"name='{name}'")]
        holders = [v for v in every if CHAMPION in client.get_model_version(name, v).aliases]
        assert holders == [alias_version(client, name, CHAMPION)]
    assert not seen_none


def test_advisory_lock_excludes_a_second_promoter(pg, server, tmp_path: Path, client) -> None:
    from mlflow import MlflowClient

    from cxr.ops.tracking import CHAMPION
    from cxr.registry.aliases import alias_version, promotion_lock
    from cxr.registry.promote import promote

    _, _, rows = manifest(tmp_path)
    v = register_version(tmp_path, rows, 100, name="locked-model")
    direct = MlflowClient(pg.url("mlflow"))  # a client on the database itself: PostgreSQL advisory locks
    done = threading.Event()
    with promotion_lock(direct, "locked-model") as kind:
        assert kind == "postgresql-advisory"
        t = threading.Thread(target=lambda: (promote(direct, "locked-model", v, "waits", "bob"), done.set()))
        t.start()
        time.sleep(2)
        assert not done.is_set() and alias_version(client, "locked-model", CHAMPION) is None
    t.join(60)
    assert done.is_set() and alias_version(client, "locked-model", CHAMPION) == v


def test_unreachable_tracking_server_fails_fast() -> None:
    from cxr.ops.tracking import TrackingUnavailable, check_tracking

    with pytest.raises(TrackingUnavailable, match="unreachable"):
        check_tracking(f"http://127.0.0.1:{closed_port()}")
