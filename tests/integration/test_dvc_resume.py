"""A `dvc repro` whose training is killed after its best epoch resumes to the uninterrupted result.

DVC deletes a stage's cached outputs (``models/best.pt``) before it reruns the stage; the resume point
(``models/last.pt``) is not an output, so DVC leaves it alone. The rerun must therefore give back ``best.pt``
even when no later epoch improves on it: the same checkpoint and metrics as a run that was never killed.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import make_project, tiny_params

from cxr.core.config import load_settings
from cxr.ops.dvc import DvcError, run_dvc

pytestmark = pytest.mark.slow

EPOCHS = 4
#: Pinned rather than taken from params.yaml: the test needs a run whose best epoch comes before its last, as
#: it does at these settings; with the defaults' lighter augmentation every epoch improves, and a kill after
#: the last one loses nothing.
TRAIN = {"epochs": EPOCHS, "lr": 5e-4, "augment": {"p": 0.8, "brightness": 0.15, "contrast": 0.15}}
COMPARED = ("epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1")

# Loaded by every Python process of the test (DVC and the stage) through PYTHONPATH: when the variable is
# set, the process that writes models/last.pt for the N-th time is SIGKILLed right after that write, with
# its whole process group ("group": `dvc repro` and the stage, as a user's kill -9 of the command) or
# alone ("stage": what the kernel's OOM killer does), at the same point of every run.
KILL_HOOK = textwrap.dedent(
    """
    import os, signal
    _spec = os.environ.get("CXR_TEST_KILL_AFTER_LAST")
    if _spec:
        _target, _n = _spec.split(":")
        _replace, _seen = os.replace, [0]

        def _killing_replace(src, dst, *args, **kwargs):
            _replace(src, dst, *args, **kwargs)
            if os.path.basename(os.fspath(dst)) == "last.pt":
                _seen[0] += 1
                if _seen[0] == int(_n):
                    if _target == "group":
                        os.killpg(os.getpgrp(), signal.SIGKILL)
                    os.kill(os.getpid(), signal.SIGKILL)

        os.replace = _killing_replace
    """
)


@pytest.fixture(scope="module")
def prepared(module_tmp: Path) -> Path:
    """A project with its data made and its split stage run by DVC: what every run of the test starts from.

    Built once and copied: the data comes from the download step in-process (its command is tested
    elsewhere), and ``dvc repro split`` records the split in dvc.lock, so each copy's ``dvc repro train``
    runs the training stage only, the one that is killed and resumed.
    """
    from cxr.data.download import download

    root = make_project(module_tmp / "prepared", tiny_params(train=TRAIN))
    s = load_settings(root / "params.yaml")
    download(s.base, s.download, s.paths(root))
    run_dvc(["repro", "split"], root)
    return root


def _project(prepared: Path, root: Path) -> Path:
    shutil.copytree(prepared, root, symlinks=True)
    return root


def _repro(root: Path) -> str:
    """`dvc repro train` the way the flow's task runs it (in its own process group, output streamed)."""
    return run_dvc(["repro", "train"], root, on_line=lambda line: None)


def _outcome(root: Path) -> tuple[list[dict], dict, dict]:
    with (root / "reports" / "train" / "history.csv").open() as fh:
        history = [{k: row[k] for k in COMPARED} for row in csv.DictReader(fh)]
    metrics = json.loads((root / "reports" / "train" / "metrics.json").read_text())
    metrics.pop("img_s")
    best = torch.load(root / "models" / "best.pt", weights_only=True)
    return history, metrics, best


@pytest.fixture(scope="module")
def reference(prepared: Path, module_tmp: Path) -> tuple[list[dict], dict, dict]:
    root = _project(prepared, module_tmp / "reference")
    _repro(root)
    return _outcome(root)


@pytest.mark.parametrize("target", ["group", "stage"])
def test_killed_dvc_repro_resumes_to_the_uninterrupted_result(
    target: str, prepared: Path, reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.pipeline_tasks import is_transient

    ref_history, ref_metrics, ref_best = reference
    best_epoch = ref_metrics["epoch"]
    # The case that lost best.pt: killed after the best epoch, and no later epoch improves on it.
    assert best_epoch < EPOCHS, f"the reference run's best epoch is its last ({ref_metrics}); pick other params"
    root = _project(prepared, tmp_path / "project")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_HOOK)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("CXR_TEST_KILL_AFTER_LAST", f"{target}:{best_epoch}")

    with pytest.raises(DvcError) as killed:
        _repro(root)
    # DVC killed with its stage is a plain failure; a stage killed under a live DVC is the error that
    # the flow's task retries on (training resumes from last.pt).
    assert is_transient(killed.value) == (target == "stage"), killed.value
    state = torch.load(root / "models" / "last.pt", weights_only=True)
    assert state["epoch"] + 1 == best_epoch and not state["complete"]
    monkeypatch.delenv("CXR_TEST_KILL_AFTER_LAST")

    # The rerun (by hand, or Prefect's retry of the same `dvc repro`): resumes, finishes, DVC records it.
    out = _repro(root)
    assert "resuming from" in out
    history, metrics, best = _outcome(root)
    assert history == ref_history
    assert metrics == ref_metrics
    assert best.keys() == ref_best.keys() and best["epoch"] == ref_best["epoch"] and best["val"] == ref_best["val"]
    assert all(torch.equal(best["model"][k], ref_best["model"][k]) for k in ref_best["model"])
    # ... so the next `dvc repro` has nothing to do (it used to retrain from epoch 1).
    assert "didn't change, skipping" in _repro(root)
