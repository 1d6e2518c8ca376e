"""Training behaviour: reproducible on the CPU, and a run killed mid-epoch resumes to the same result."""

from __future__ import annotations

import csv
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_project, tiny_params

from cxr.core.config import load_settings

pytestmark = pytest.mark.slow

COMPARED = ("train_loss", "val_loss", "val_accuracy", "val_macro_f1")


@pytest.fixture(scope="module")
def prepared_template(module_tmp: Path) -> Path:
    """A project with tiny params whose data is downloaded and split (in-process: only set-up), built once."""
    from cxr.data.download import download
    from cxr.data.split import split

    root = make_project(module_tmp / "project", tiny_params(train={"epochs": 3}))
    s = load_settings(root / "params.yaml")
    download(s.base, s.download, s.paths(root))
    split(s.base, s.split, s.paths(root))
    return root


@pytest.fixture
def prepare(prepared_template: Path, tmp_path: Path):
    """A fresh copy of the prepared project under ``tmp_path / name``."""

    def _copy(name: str) -> Path:
        return Path(shutil.copytree(prepared_template, tmp_path / name, symlinks=True))

    return _copy


def _train(root: Path, **kwargs):
    """The train step in-process, on the project's params.yaml."""
    from cxr.training.loop import train

    s = load_settings(root / "params.yaml")
    return train(s.train, s.base, s.paths(root), **kwargs)


def _history(root: Path) -> list[dict]:
    with (root / "reports" / "train" / "history.csv").open() as fh:
        return [{k: row[k] for k in ("epoch", *COMPARED)} for row in csv.DictReader(fh)]


def _weights(root: Path) -> dict:
    return torch.load(root / "models" / "best.pt", weights_only=True)["model"]


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_params_and_data_give_identical_results(prepare) -> None:
    results = []
    for name in ("a", "b"):
        root = prepare(name)
        res = _train(root, resume=False)
        results.append((res.best_epoch, _history(root), _weights(root)))
    assert results[0][0] == results[1][0]
    assert results[0][1] == results[1][1]
    assert _same_weights(results[0][2], results[1][2])


def test_killed_training_resumes_to_the_uninterrupted_result(prepare) -> None:
    reference = prepare("reference")
    _train(reference, resume=False)

    # The kill and the resume go through the CLI: a real process dying mid-epoch is the point.
    crashed = prepare("crashed")
    last = crashed / "models" / "last.pt"
    child = subprocess.Popen(
        [sys.executable, "-m", "cxr", "train"], cwd=crashed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
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


class _Stop(Exception):
    """Stops a run after its first epoch, leaving an unfinished last.pt (as a kill or a pruned trial does)."""


def _stop(row: dict) -> None:
    raise _Stop


def test_a_changed_param_starts_afresh(prepare) -> None:
    root = prepare("p")
    with pytest.raises(_Stop):
        _train(root, resume=True, on_epoch=_stop)
    assert not torch.load(root / "models" / "last.pt", weights_only=True)["complete"]
    # With the same params this checkpoint would be resumed (the test above); a changed param must not be.
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["epochs"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    res = _train(root, resume=True)
    assert res.resumed_from is None
    assert [r["epoch"] for r in _history(root)] == ["1", "2"]


def test_mixup_training_is_reproducible_and_changes_the_training(prepare) -> None:
    weights = {}
    for name, mixup in (("a", 0.4), ("b", 0.4), ("off", 0.0)):
        root = prepare(name)
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["train"].update(epochs=1, mixup=mixup, lung_attention=0.0)  # mixup refuses the lung-mask loss
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        _train(root, resume=False)
        weights[name] = _weights(root)
    assert _same_weights(weights["a"], weights["b"])
    assert not _same_weights(weights["a"], weights["off"])


def test_sgd_training_runs_and_keeps_its_momentum_for_a_resume(prepare) -> None:
    root = prepare("sgd")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"].update(epochs=1, optimizer="sgd", lr=0.05, momentum=0.9)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    res = _train(root, resume=False)
    assert math.isfinite(res.best_score)
    state = torch.load(root / "models" / "last.pt", weights_only=True)["optimizer"]
    assert state["param_groups"][0]["nesterov"]
    assert all("momentum_buffer" in s for s in state["state"].values())
