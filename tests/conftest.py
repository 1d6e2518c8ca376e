"""Shared fixtures: the real params, shrunk, and a throw-away project to run the pipeline in."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml


def _share_the_cores() -> None:
    """Under pytest-xdist, give each worker its share of the cores (and its subprocesses, by the environment).

    Two workers with torch's default of one thread per core would run four OpenMP threads on two cores, where
    OpenMP slows down several-fold. Set before torch is imported; an explicit OMP_NUM_THREADS wins.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        share = str(max(1, (os.cpu_count() or 1) // workers))
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, share)


_share_the_cores()

from cxr.cli import quiet_telemetry  # noqa: E402  (after the thread settings: it may import torch)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "cxr-sample"

quiet_telemetry()


def real_params() -> dict:
    """The project's params.yaml as a mapping."""
    return yaml.safe_load((REPO / "params.yaml").read_text())


def deep_update(base: dict, changes: dict) -> dict:
    """A copy of ``base`` with ``changes`` merged in (nested)."""
    out = copy.deepcopy(base)
    for k, v in changes.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


TINY = {
    "download": {"synthetic": {"per_class": 20, "workers": 1}, "workers": 1},
    "split": {"valid": 16, "test": 16},
    "train": {"image_size": 48, "epochs": 2, "batch_size": 16, "num_workers": 0, "channels_last": False},
    "evaluate": {"n_boot": 50, "batch_size": 32},
    "gradcam": {"per_class": 2, "batch_size": 16},
}


def tiny_params(**changes) -> dict:
    """The real params shrunk to a seconds-long pipeline."""
    return deep_update(deep_update(real_params(), TINY), changes)


def make_project(root: Path, params: dict) -> Path:
    """A git + DVC project in ``root`` with the pipeline's code, dvc.yaml and the given params."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("cxr", "tasks", "flows"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    subprocess.run(["git", "init", "-q"], cwd=root, check=True, env=env)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True, env=env)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "init"], cwd=root, check=True, env=env)
    return root


@pytest.fixture
def tiny_project(tmp_path: Path) -> Path:
    """A fresh project with tiny params, ready for ``cxr`` steps or the flow."""
    return make_project(tmp_path / "project", tiny_params())


@pytest.fixture(scope="module")
def module_tmp(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[Path]:
    """A folder for one module's shared fixtures, removed when the module is done unless one of its tests failed.

    The same rule as ``tmp_path`` under ``tmp_path_retention_policy = "failed"``: each trained project holds
    hundreds of MB of checkpoints, and a whole session's worth would fill a small disk.
    """
    failed_before = request.session.testsfailed
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    if request.session.testsfailed == failed_before:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def work(module_tmp: Path) -> Path:
    """A benchmark's work folder for one test module, so its tiny synthetic dataset is generated once."""
    return module_tmp


#: What an MLflow call without a tracking URI would leave in the checkout.
STRAY_STORES = ("mlruns", "mlartifacts", "mlflow.db")


@pytest.fixture(scope="session")
def session_tracking_uri(tmp_path_factory) -> Iterator[str]:
    """A throw-away sqlite store for tests that name none; fails the run if a store appears in the checkout."""
    before = {name for name in STRAY_STORES if (REPO / name).exists()}
    yield f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    stray = sorted({name for name in STRAY_STORES if (REPO / name).exists()} - before)
    assert not stray, f"the tests left {stray} in {REPO}: some MLflow call ran without a tracking URI under tmp_path"


@pytest.fixture(autouse=True)
def tracking_under_tmp(session_tracking_uri: str, monkeypatch) -> None:
    """MLFLOW_TRACKING_URI points under the temporary folder, never at the default ./mlruns of the checkout.

    Set before every test: ``mlflow.set_tracking_uri(None)`` in a fixture's teardown also clears the variable.
    A test that needs the project's default store deletes it with monkeypatch.
    """
    monkeypatch.setenv("MLFLOW_TRACKING_URI", session_tracking_uri)


#: The modules that take longest (minutes, most of it one module-scoped fixture or one end-to-end run), longest
#: first. Under ``--dist loadscope`` a module runs whole on one worker, so the suite ends no sooner than the last
#: long module started plus its length: these start first, the many short tests fill in around them. Only the
#: order changes; what passes does not.
LONGEST_FIRST = (
    "tests/model/test_pointing.py",
    "tests/integration/test_team_faults.py",
    "tests/integration/test_two_machines.py",
    "tests/integration/test_flow_benchmark.py",
    "tests/integration/test_pipeline.py",
    "tests/integration/test_experiments.py",
    "tests/integration/test_prefect_deployment.py",
    "tests/integration/test_dvc_resume.py",
)


def _schedule_rank(item: pytest.Item) -> tuple[int, int]:
    path = Path(str(item.path)).relative_to(REPO).as_posix()
    if path in LONGEST_FIRST:
        return 0, LONGEST_FIRST.index(path)
    return (1 if item.get_closest_marker("slow") else 2), 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The long modules first, then the other slow ones, then the rest (a stable sort: files keep their order).

    The Makefile passes ``--no-loadscope-reorder``: pytest-xdist's default order, most tests first, would
    start the long modules, which have one or two tests each, last.
    """
    items.sort(key=_schedule_rank)


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The real chest X-ray sample beside the repository."""
    if not SAMPLE.is_dir():
        pytest.skip(f"real sample not found at {SAMPLE}")
    return SAMPLE


def label_reading_model(classes: tuple[str, ...]):
    """A pyfunc under the cxr.serving.pyfunc contract (``image`` paths in; ``p_<class>`` and ``label`` out) that reads
    the label written in each image file: a champion stand-in whose answers a test controls."""
    import mlflow
    import pandas as pd

    class _Model(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            labels = [Path(p).read_text().strip() for p in model_input["image"]]
            out = pd.DataFrame({f"p_{c}": [float(lab == c) for lab in labels] for c in classes})
            out["label"] = labels
            return out

    return _Model()
