"""The ``cxr`` command as a user runs it: a fresh process, without the Makefile's environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO, tiny_params


def cxr(args: list[str], cwd: Path, env: dict[str, str | None] | None = None,
        timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m cxr ARGS`` in ``cwd`` with this checkout's code; ``env`` laid over os.environ (None removes)."""
    full = {**os.environ, **(env or {})}
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full.get("PYTHONPATH")]))
    full = {k: v for k, v in full.items() if v is not None}
    return subprocess.run([sys.executable, "-m", "cxr", *args], cwd=cwd, env=full, capture_output=True, text=True,
                          timeout=timeout)


FAKE_FLOW = '''
"""Stands in for flows/pipeline.py: imports Prefect at import time, as the real flow module does."""
from prefect.settings import get_current_settings


def pipeline(params, root):
    return get_current_settings().server.ephemeral.startup_timeout_seconds
'''


def test_run_gives_prefect_a_patient_startup_without_the_makefile(tmp_path: Path) -> None:
    """`python -m cxr run` sets Prefect's ephemeral start-up timeout before Prefect reads its settings."""
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "__init__.py").write_text("")
    (tmp_path / "flows" / "pipeline.py").write_text(FAKE_FLOW)  # found first: the current folder leads sys.path
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / ".prefect")
    proc = cxr(["run"], tmp_path, env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "pipeline done: 180"
