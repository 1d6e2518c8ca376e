"""The train step's live MLflow run: epochs as they end, a resumed run's earlier ones afterwards, the checkpoint's
hash; best-effort, so a store that is down or goes away never fails a training."""

from __future__ import annotations

import logging
import socket
import time
from contextlib import nullcontext
from pathlib import Path

import pytest
from conftest import tiny_params

from cxr.ops.trainrun import (
    CHECKPOINT_TAG,
    KIND_TAG,
    LiveRun,
    checkpoint_digest,
    live_training,
    start_live_run,
)

PARAMS = {"base": {"seed": 42, "classes": ["A", "B"]}, "train": {"lr": 0.001, "augment": {"p": 0.5}}}


def _row(epoch: int, loss: float) -> dict:
    return {"epoch": epoch, "lr": 0.001, "train_loss": loss, "val_loss": loss + 0.1, "val_accuracy": 0.5}


def test_epochs_are_logged_as_they_end_and_the_result_after(tmp_path: Path) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    run = start_live_run(uri, tmp_path, "cxr", PARAMS, {"params_hash": "abc"})
    assert run.active
    exp = client.get_experiment_by_name("cxr")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    live = client.get_run(run.run_id)
    assert live.info.status == "RUNNING" and live.data.tags[KIND_TAG] == "train"
    assert live.data.tags["params_hash"] == "abc" and "mlflow.user" in live.data.tags
    assert live.data.params["train.lr"] == "0.001" and live.data.params["train.augment.p"] == "0.5"
    assert live.data.params["base.classes"] == '["A", "B"]'  # as the pipeline run logs it

    # A resumed training: epoch 1 ran in an earlier process, epochs 2 and 3 here, each visible as it ends.
    run.log_epoch(_row(2, 0.8))
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "epoch/train_loss")] == [(2, 0.8)]
    run.log_epoch(_row(3, 0.7))
    history = tmp_path / "history.csv"
    history.write_text("epoch,lr,train_loss,val_loss,val_accuracy\n1,0.001,0.9,1.0,0.4\n2,0.001,0.8,0.9,0.5\n")
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"weights")
    run.record_result(history, checkpoint, {"best_epoch": 3, "best_score": 0.5})
    run.end("FINISHED")

    done = client.get_run(run.run_id)
    assert done.info.status == "FINISHED"
    assert sorted((m.step, m.value) for m in client.get_metric_history(run.run_id, "epoch/train_loss")) == [
        (1, 0.9),
        (2, 0.8),
        (3, 0.7),
    ]
    assert done.data.metrics["train/best_epoch"] == 3
    assert done.data.tags[CHECKPOINT_TAG] == checkpoint_digest(checkpoint) and len(checkpoint_digest(checkpoint)) == 64


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_costs_a_warning_not_the_training(tmp_path: Path, caplog) -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, "cxr.ops.trainrun"):
        run = start_live_run(uri, tmp_path, "cxr", PARAMS, {})
    assert time.monotonic() - started < 10
    assert not run.active and "no live MLflow run" in caplog.text and uri in caplog.text
    run.log_epoch(_row(1, 1.0))  # no-ops
    run.record_result(tmp_path / "none.csv", tmp_path / "none.pt", {})
    run.end("FINISHED")
    assert not list(tmp_path.iterdir())


class _GoneAway:
    """A client whose server stopped answering after the run started."""

    def __init__(self) -> None:
        self.calls = 0

    def log_batch(self, *args, **kwargs) -> None:
        self.calls += 1
        raise ConnectionError("connection refused")

    set_tag = set_terminated = log_batch


def test_a_server_that_goes_away_mid_training_warns_once(caplog) -> None:
    client = _GoneAway()
    run = LiveRun(client, "r1")
    with caplog.at_level(logging.WARNING, "cxr.ops.trainrun"):
        for epoch in (1, 2, 3):
            run.log_epoch(_row(epoch, 1.0))
        run.record_result(Path("history.csv"), Path("best.pt"), {"best_epoch": 1})
        run.end("FINISHED")
    assert client.calls == 1 and not run.active
    assert caplog.text.count("training goes on without live tracking") == 1


def test_a_row_it_cannot_log_is_a_warning_not_an_error(caplog) -> None:
    """Whatever goes wrong in the callback stays there: the loop that called it goes on."""
    with caplog.at_level(logging.WARNING, "cxr.ops.trainrun"):
        LiveRun(_GoneAway(), "r1").log_epoch({"val_loss": 1.0})  # no epoch
    assert "logging epoch None failed" in caplog.text


def test_the_block_ends_the_run_failed_killed_or_finished(tmp_path: Path, monkeypatch) -> None:
    import mlflow

    from cxr.core.config import parse_settings

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DVC_EXP_NAME", "lr-0.001")
    settings = parse_settings(tiny_params())
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    statuses = []
    for error in (RuntimeError("out of memory"), KeyboardInterrupt(), None):
        with pytest.raises(type(error)) if error else nullcontext(), live_training(settings, tmp_path, True) as run:
            if error:
                raise error
        statuses.append(client.get_run(run.run_id).info.status)
    assert statuses == ["FAILED", "KILLED", "FINISHED"]
    tags = client.get_run(run.run_id).data.tags
    assert tags["params_hash"] == settings.fingerprint() and tags["cxr.dvc_exp"] == "lr-0.001"
    assert tags["cxr.resume"] == "true"
    with live_training(settings, tmp_path, True, track=False) as off:
        assert not off.active
    monkeypatch.setenv("RANK", "1")  # DDP: only rank 0 logs
    with live_training(settings, tmp_path, True) as other_rank:
        assert not other_rank.active
    assert len(client.search_runs([client.get_experiment_by_name(settings.base.experiment).experiment_id])) == 3
