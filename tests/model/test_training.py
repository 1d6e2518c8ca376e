"""Training behaviour: reproducible on the CPU, and a run killed mid-epoch resumes to the same result."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import make_project, tiny_params
from cxr.config import load_settings

pytestmark = pytest.mark.slow

COMPARED = ("train_loss", "val_loss", "val_accuracy", "val_macro_f1")


def _prepared(root: Path, **changes) -> Path:
    make_project(root, tiny_params(train={"epochs": 3, **changes}))
    for step in ("download", "split"):
        proc = subprocess.run([sys.executable, "-m", "cxr", step], cwd=root, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    return root


def _history(root: Path) -> list[dict]:
    with (root / "reports" / "train" / "history.csv").open() as fh:
        return [{k: row[k] for k in ("epoch", *COMPARED)} for row in csv.DictReader(fh)]


def _weights(root: Path) -> dict:
    return torch.load(root / "models" / "best.pt", weights_only=True)["model"]


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_params_and_data_give_identical_results(tmp_path: Path) -> None:
    from cxr.train import train

    results = []
    for name in ("a", "b"):
        root = _prepared(tmp_path / name)
        s = load_settings(root / "params.yaml")
        res = train(s.train, s.base, s.paths(root), resume=False)
        results.append((res.best_epoch, _history(root), _weights(root)))
    assert results[0][0] == results[1][0]
    assert results[0][1] == results[1][1]
    assert _same_weights(results[0][2], results[1][2])


def test_killed_training_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    reference = _prepared(tmp_path / "reference")
    proc = subprocess.run([sys.executable, "-m", "cxr", "train"], cwd=reference, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr

    crashed = _prepared(tmp_path / "crashed")
    last = crashed / "models" / "last.pt"
    child = subprocess.Popen([sys.executable, "-m", "cxr", "train"], cwd=crashed,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not last.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child.poll() is None, "training finished before it could be killed"
    time.sleep(0.3)  # into the second epoch
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    state = torch.load(last, weights_only=True)
    assert not state["complete"] and state["epoch"] < 2

    proc = subprocess.run([sys.executable, "-m", "cxr", "train"], cwd=crashed, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "resuming from" in proc.stderr
    assert _history(crashed) == _history(reference)
    assert _same_weights(_weights(crashed), _weights(reference))


def test_a_changed_param_starts_afresh(tmp_path: Path) -> None:
    root = _prepared(tmp_path / "p", epochs=1)
    assert subprocess.run([sys.executable, "-m", "cxr", "train"], cwd=root, capture_output=True).returncode == 0
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["epochs"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, "-m", "cxr", "train"], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0 and "resuming" not in proc.stderr
    assert [r["epoch"] for r in _history(root)] == ["1", "2"]


def test_mixup_training_is_reproducible_and_changes_the_training(tmp_path: Path) -> None:
    from cxr.train import train

    weights = {}
    for name, mixup in (("a", 0.4), ("b", 0.4), ("off", 0.0)):
        root = _prepared(tmp_path / name, epochs=1, mixup=mixup)
        s = load_settings(root / "params.yaml")
        train(s.train, s.base, s.paths(root), resume=False)
        weights[name] = _weights(root)
    assert _same_weights(weights["a"], weights["b"])
    assert not _same_weights(weights["a"], weights["off"])
