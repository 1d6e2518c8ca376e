"""The whole Prefect flow vs the same steps without Prefect (``cxr download``, ``dvc repro``, ``cxr register``).

Each side runs from a clean state in its own fresh git + DVC project (``tests/conftest.py``'s
``make_project`` with ``tiny_params``), as a user would start it: ``python -m cxr run`` with an empty
``PREFECT_HOME`` (so Prefect starts its temporary server and creates its database, as ``make run`` does
the first time), against the three commands in a row. A trivial one-task-free flow, also from an empty
``PREFECT_HOME``, gives Prefect's fixed cost (start-up of the temporary server, database, flow run).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import REPO, Figure, Outcome, Row, tail

#: Further shrinking of tiny_params for the smoke test (the full benchmark uses tiny_params as they are).
SMOKE = {
    "download": {"synthetic": {"per_class": 12, "workers": 1}, "workers": 1},
    "split": {"valid": 8, "test": 8},
    "train": {"image_size": 32, "epochs": 1, "batch_size": 16},
    "evaluate": {"n_boot": 20},
    "gradcam": {"per_class": 1, "batch_size": 4},
}

TRIVIAL_FLOW = "from prefect import flow\n@flow\ndef noop():\n    return 1\nnoop()\n"


def _conftest():
    """tests/conftest.py as a module (make_project, tiny_params), loaded by path under a private name."""
    spec = importlib.util.spec_from_file_location("_cxr_bench_conftest", REPO / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env(prefect_home: Path) -> dict[str, str]:
    """A clean environment for one side: its own empty PREFECT_HOME, no external Prefect or MLflow server."""
    from cxr.dvcops import dvc_env

    env = dvc_env()
    for key in ("PREFECT_API_URL", "PREFECT_PROFILE", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    env["PREFECT_HOME"] = str(prefect_home)
    return env


def _timed(cmds: list[list[str]], cwd: Path, env: dict[str, str]) -> tuple[float, list[float]]:
    """Run commands in a row; total seconds and each one's (raises with the output tail on failure)."""
    each = []
    for cmd in cmds:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        each.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed in {cwd} (exit {proc.returncode}):\n"
                               f"{tail(proc.stdout + proc.stderr)}")
    return sum(each), each


def run(size: str, work: Path) -> Outcome:
    """Run the flow benchmark at ``size`` with scratch space under ``work``."""
    conf = _conftest()
    params = conf.tiny_params() if size == "full" else conf.deep_update(conf.tiny_params(), SMOKE)
    scratch = work / "flow"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    py = sys.executable

    dvc_root = conf.make_project(scratch / "dvc", params)
    t_dvc, (t_download, t_repro, t_register) = _timed(
        [[py, "-m", "cxr", "download"], [py, "-m", "dvc", "repro"], [py, "-m", "cxr", "register"]],
        dvc_root, _env(scratch / "dvc-prefect-home"),
    )

    flow_root = conf.make_project(scratch / "prefect", params)
    t_flow, _ = _timed([[py, "-m", "cxr", "run"]], flow_root, _env(flow_root / ".prefect"))

    t_trivial, _ = _timed([[py, "-c", TRIVIAL_FLOW]], scratch, _env(scratch / "trivial-prefect-home"))
    t_import, _ = _timed([[py, "-c", "import prefect, flows.pipeline"]], flow_root, _env(scratch / "import-home"))

    # Both sides must have done the same work: dvc.lock true in each.
    for root in (dvc_root, flow_root):
        status = subprocess.run([py, "-m", "dvc", "status"], cwd=root, env=_env(scratch / "status-home"),
                                capture_output=True, text=True)
        if "up to date" not in status.stdout.lower():
            raise RuntimeError(f"{root}: dvc status is not clean after the run:\n{tail(status.stdout + status.stderr)}")

    overhead = t_flow / t_dvc
    out = Outcome("flow")
    out.rows = [
        Row("Prefect flow (python -m cxr run), clean", t_flow, "s", t_dvc, overhead),
        Row("cxr download + dvc repro + cxr register", t_dvc, "s"),
        Row("  of which cxr download", t_download, "s"),
        Row("  of which dvc repro (4 stages)", t_repro, "s"),
        Row("  of which cxr register", t_register, "s"),
        Row("trivial flow, empty PREFECT_HOME", t_trivial, "s"),
        Row("python -c 'import prefect, flows.pipeline'", t_import, "s"),
    ]
    out.figures = [Figure("flow_overhead_vs_dvc_repro", overhead, ("<", 1.25))]
    out.extra = {
        "flow_s": t_flow,
        "flow_dvc_baseline_s": t_dvc,
        "flow_dvc_download_s": t_download,
        "flow_dvc_repro_s": t_repro,
        "flow_dvc_register_s": t_register,
        "flow_prefect_trivial_s": t_trivial,
        "flow_prefect_import_s": t_import,
        "flow_extra_s": t_flow - t_dvc,
    }
    out.notes.append(
        f"the flow took {t_flow - t_dvc:+.1f}s over the plain commands; a trivial flow from an empty PREFECT_HOME "
        f"(temporary server start-up, database creation, one flow run) costs {t_trivial:.1f}s, of which "
        f"{t_import:.1f}s is importing Prefect and the flow"
    )
    return out
