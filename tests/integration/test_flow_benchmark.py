"""`python -m benchmarks flow` at its tiny size: the whole flow against the same steps without Prefect."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchsupport import restore_threads, run_tiny  # noqa: F401  (restore_threads: an autouse fixture)


@pytest.mark.slow
def test_flow_benchmark_runs_tiny(work: Path, tmp_path: Path, capsys) -> None:
    data = run_tiny("flow", work, tmp_path, capsys)
    assert data["flow_overhead_vs_dvc_repro"] > 0
    assert data["flow_s"] > 0 and data["flow_prefect_trivial_served_s"] > 0  # timings are read, never compared
    assert data["flow_prefect_trivial_s"] > 0  # the trivial flow from an empty PREFECT_HOME still runs
    assert data["flow_dvc_gate_s"] > 0  # the baseline does what the flow does, the promotion gate included
    # The first full run from an empty PREFECT_HOME is timed at full size only (the pipeline tests run that case).
    assert "flow_first_run_s" not in data and "flow_overhead_first_run_vs_dvc_repro" not in data
