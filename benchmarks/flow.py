"""The whole Prefect flow vs the same steps without Prefect (``cxr download``, ``dvc repro``, ``cxr drift``,
``cxr register``, ``cxr gate``).

Each side runs from a clean state in its own fresh git + DVC project (``tests/conftest.py``'s
``make_project`` with ``tiny_params``). The flow is timed twice:

* against a long-lived Prefect server on 127.0.0.1 (``PREFECT_API_URL`` set), the way a scheduled
  deployment runs: the server was started and became healthy before the clock starts, once for every
  run it will ever orchestrate. This is the headline, ``flow_overhead_vs_dvc_repro``;
* as a first ``make run`` does it: an empty ``PREFECT_HOME``, so Prefect starts its temporary server and
  creates its database inside the run (``flow_overhead_first_run_vs_dvc_repro``, reported, no goal;
  full size only: the smoke test's empty-home case is the trivial flow).

A trivial flow, both ways, gives Prefect's fixed cost per run.
"""

from __future__ import annotations

import importlib.util
import re
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


def _load(name: str, path: Path):
    """A module loaded by path under a private name (the tests' helpers are not a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _conftest():
    """tests/conftest.py as a module (make_project, tiny_params)."""
    return _load("_cxr_bench_conftest", REPO / "tests" / "conftest.py")


def _servers():
    """tests/integration/servers.py as a module: the Prefect server helper, started and stopped by PID."""
    return _load("_cxr_bench_servers", REPO / "tests" / "integration" / "servers.py")


def _env(prefect_home: Path) -> dict[str, str]:
    """A clean environment for one side: its own empty PREFECT_HOME, no external Prefect or MLflow server."""
    from cxr.ops.dvc import dvc_env

    env = dvc_env()
    for key in ("PREFECT_API_URL", "PREFECT_PROFILE", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    env["PREFECT_HOME"] = str(prefect_home)
    return env


def _timed(cmd: list[str], cwd: Path, env: dict[str, str], ok: tuple[int, ...] = (0,)) -> tuple[float, str]:
    """Run one command; its seconds and stdout (raises with the output tail when its exit code is not in ``ok``)."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode not in ok:
        raise RuntimeError(
            f"`{' '.join(cmd)}` failed in {cwd} (exit {proc.returncode}):\n{tail(proc.stdout + proc.stderr)}"
        )
    return seconds, proc.stdout


def _plain_steps(root: Path, env: dict[str, str]) -> dict[str, float]:
    """What the flow does, as the commands a user would type: seconds per command."""
    py = sys.executable
    t = {}
    t["download"], _ = _timed([py, "-m", "cxr", "download"], root, env)
    t["repro"], _ = _timed([py, "-m", "dvc", "repro"], root, env)
    # Exit 3 is the drift check's documented "drift flagged": a finding, not a failure.
    t["drift"], _ = _timed([py, "-m", "cxr", "drift"], root, env, ok=(0, 3))
    t["register"], out = _timed([py, "-m", "cxr", "register"], root, env)
    found = re.search(r"version (\S+)\s*$", out.strip())
    if not found:
        raise RuntimeError(f"`cxr register` printed no model version:\n{tail(out)}")
    # Exit 3 is the gate's documented refusal (a tiny model misses the floors), 4 a pass that drift holds back:
    # decisions, not failures.
    t["gate"], _ = _timed([py, "-m", "cxr", "gate", found.group(1)], root, env, ok=(0, 3, 4))
    return t


def run(size: str, work: Path) -> Outcome:
    """Run the flow benchmark at ``size`` with scratch space under ``work``."""
    from cxr.ops.dvc import pipeline_stages

    stages = pipeline_stages(Path(__file__).resolve().parents[1])
    conf = _conftest()
    params = conf.tiny_params() if size == "full" else conf.deep_update(conf.tiny_params(), SMOKE)
    scratch = work / "flow"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    py = sys.executable
    run_flow = [py, "-m", "cxr", "run"]

    dvc_root = conf.make_project(scratch / "dvc", params)
    plain = _plain_steps(dvc_root, _env(scratch / "dvc-prefect-home"))
    t_dvc = sum(plain.values())

    server_home = scratch / "server-home"
    with _servers().running_prefect_server(server_home, _env(server_home)) as api:
        served = {**_env(scratch / "client-home"), "PREFECT_API_URL": api}
        flow_root = conf.make_project(scratch / "prefect", params)
        t_flow, _ = _timed(run_flow, flow_root, served)
        t_trivial_served, _ = _timed([py, "-c", TRIVIAL_FLOW], scratch, served)

    t_trivial, _ = _timed([py, "-c", TRIVIAL_FLOW], scratch, _env(scratch / "trivial-prefect-home"))
    t_import, _ = _timed([py, "-c", "import prefect, flows.pipeline"], flow_root, _env(scratch / "import-home"))
    roots = [dvc_root, flow_root]
    t_first = None
    if size == "full":
        # The smoke test leaves this side out: it is `python -m cxr run` again, only with an empty PREFECT_HOME,
        # which tests/integration/test_pipeline.py runs already; the trivial flow above covers the empty home.
        first_root = conf.make_project(scratch / "prefect-first", params)
        t_first, _ = _timed(run_flow, first_root, _env(first_root / ".prefect"))
        roots.append(first_root)

    # Every side must have done the same work: dvc.lock true in each.
    for root in roots:
        status = subprocess.run(
            [py, "-m", "dvc", "status"], cwd=root, env=_env(scratch / "status-home"), capture_output=True, text=True
        )
        if "up to date" not in status.stdout.lower():
            raise RuntimeError(f"{root}: dvc status is not clean after the run:\n{tail(status.stdout + status.stderr)}")

    overhead = t_flow / t_dvc
    out = Outcome("flow")
    out.rows = [Row("Prefect flow (python -m cxr run), server running", t_flow, "s", t_dvc, overhead)]
    if t_first is not None:
        out.rows.append(Row("Prefect flow, first run (empty PREFECT_HOME)", t_first, "s", t_dvc, t_first / t_dvc))
    out.rows += [
        Row("cxr download + dvc repro + cxr register + cxr gate", t_dvc, "s"),
        Row("  of which cxr download", plain["download"], "s"),
        Row(f"  of which dvc repro ({len(stages)} stages)", plain["repro"], "s"),
        Row("  of which cxr drift", plain["drift"], "s"),
        Row("  of which cxr register", plain["register"], "s"),
        Row("  of which cxr gate", plain["gate"], "s"),
        Row("trivial flow, server running", t_trivial_served, "s"),
        Row("trivial flow, empty PREFECT_HOME", t_trivial, "s"),
        Row("python -c 'import prefect, flows.pipeline'", t_import, "s"),
    ]
    out.figures = [Figure("flow_overhead_vs_dvc_repro", overhead, ("<", 1.25))]
    out.extra = {
        "flow_s": t_flow,
        "flow_dvc_baseline_s": t_dvc,
        "flow_dvc_download_s": plain["download"],
        "flow_dvc_repro_s": plain["repro"],
        "flow_dvc_drift_s": plain["drift"],
        "flow_dvc_register_s": plain["register"],
        "flow_dvc_gate_s": plain["gate"],
        "flow_prefect_trivial_served_s": t_trivial_served,
        "flow_prefect_trivial_s": t_trivial,
        "flow_prefect_import_s": t_import,
        "flow_extra_s": t_flow - t_dvc,
    }
    note = (
        f"with a Prefect server already running (as for a scheduled deployment) the flow took "
        f"{t_flow - t_dvc:+.1f}s over the plain commands, a trivial flow {t_trivial_served:.1f}s; "
    )
    if t_first is not None:
        out.figures.append(Figure("flow_overhead_first_run_vs_dvc_repro", t_first / t_dvc))
        out.extra.update(flow_first_run_s=t_first, flow_first_run_extra_s=t_first - t_dvc)
        note += f"a first run from an empty PREFECT_HOME took {t_first - t_dvc:+.1f}s, "
    note += (
        f"a trivial flow from an empty PREFECT_HOME {t_trivial:.1f}s (temporary server start-up, database "
        f"creation, one flow run), of which {t_import:.1f}s is importing Prefect and the flow"
    )
    out.notes.append(note)
    return out
