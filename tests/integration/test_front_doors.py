"""A scheduled run (the Prefect flow) and the command line (`dvc repro`, `cxr register`, `cxr gate`) decide
alike: the same new version, the same champion, the same drift check, the same verdict in the same words."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import deep_update, make_project, tiny_params
from test_pipeline import SMALL, dvc

pytestmark = pytest.mark.slow

# Every version passes the floors and the comparison, and the drift check flags any difference at all
# (alpha 0.99): the only thing that can stop a promotion is the drift hold, which is what is compared.
CASE = {
    "registry": {"min_accuracy": 0.0, "min_macro_auc": 0.0, "min_sensitivity": {"COVID": 0.0}, "margin": 0.99},
    "drift": {"alpha": 0.99, "block_promotion": True, "notify": False, "permutations": 50, "max_images": 40},
}


def cxr(root: Path, *args: str) -> subprocess.CompletedProcess:
    """A `cxr` command in ``root``, on that project's own tracking store (the test process may name another)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-m", "cxr", *args], cwd=root, capture_output=True, text=True, env=env)


def gate_tags(root: Path, version: str) -> dict[str, str]:
    import mlflow

    tags = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}").get_model_version("cxr-classifier", version).tags
    return {k: v for k, v in tags.items() if k in ("gate.decision", "gate.held_by", "gate.reasons")}


def champion(root: Path) -> str:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    return str(client.get_model_version_by_alias("cxr-classifier", "champion").version)


def drifted_arrivals(root: Path, folder: Path) -> Path:
    """The project's images and 8 more per class in a local folder (Kaggle v5 layout); the new ones stored as
    another source would store them (96 px RGB instead of 64 px gray): drift the check finds whatever its
    random draws, so the held-back verdict does not rest on luck."""
    import csv
    import hashlib

    import cv2

    from cxr.data.synthetic import generate

    params = yaml.safe_load((root / "params.yaml").read_text())
    per_class = params["download"]["synthetic"]["per_class"] + 8
    generate(folder, dict.fromkeys(params["base"]["classes"], per_class), size=64, seed=params["base"]["seed"])
    with (root / "data" / "split" / "manifest.csv").open(newline="") as f:
        known = {row["sha256"] for row in csv.DictReader(f)}
    new = [p for p in sorted(folder.glob("*/images/*.png")) if hashlib.sha256(p.read_bytes()).hexdigest() not in known]
    assert len(new) == 8 * len(params["base"]["classes"]), len(new)  # the generator repeats the first images
    for path in new:
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(path), cv2.cvtColor(cv2.resize(gray, (96, 96)), cv2.COLOR_GRAY2BGR))
    return folder


def test_the_flow_and_the_command_line_hold_a_drifting_version_alike(tmp_path: Path, monkeypatch) -> None:
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import pipeline

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # each project's own store, as `make run` has it
    flow_root = make_project(tmp_path / "flow", deep_update(tiny_params(**SMALL), CASE))
    # Version 1 becomes champion from the command line (no champion yet: the drift check has nothing to compare).
    assert cxr(flow_root, "download").returncode == 0
    dvc(flow_root, "repro")
    assert "registered cxr-classifier version 1" in cxr(flow_root, "register").stdout
    first = cxr(flow_root, "gate", "1")
    assert first.returncode == 0 and "version 1: promoted to champion" in first.stdout, first.stdout + first.stderr

    # A second machine's copy of the project, registry included; then the same change on both: more images
    # arrive, from a source that stores them otherwise (the drift check compares the new ones with the
    # champion's), and training is shorter.
    cli_root = tmp_path / "cli"
    shutil.copytree(flow_root, cli_root, symlinks=True)
    arrivals = drifted_arrivals(flow_root, tmp_path / "arrivals")
    for root in (flow_root, cli_root):
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["train"]["epochs"] = 1
        params["download"]["source"] = "local"
        params["download"]["local"] = {"path": str(arrivals)}
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    with prefect_test_harness(server_startup_timeout=180):
        scheduled = pipeline(params="params.yaml", root=str(flow_root))["gate"]
    assert cxr(cli_root, "download").returncode == 0
    dvc(cli_root, "repro")
    assert "registered cxr-classifier version 2" in cxr(cli_root, "register").stdout
    by_hand = cxr(cli_root, "gate", "2")

    assert scheduled["version"] == "2" and scheduled["held_by"], scheduled
    assert by_hand.returncode == 4, by_hand.stdout + by_hand.stderr  # passed, held back by drift
    assert by_hand.stdout.splitlines()[0] == f"cxr-classifier version 2: {scheduled['verdict']}"
    assert gate_tags(flow_root, "2") == gate_tags(cli_root, "2")
    assert champion(flow_root) == champion(cli_root) == "1"
    assert (cli_root / "reports" / "drift.json").is_file()  # the gate ran the check itself: no report was current
    proc = cxr(cli_root, "drift")
    assert proc.returncode == 3 and proc.stdout.startswith("drift: "), proc.stdout + proc.stderr
