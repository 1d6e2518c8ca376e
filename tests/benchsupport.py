"""What the benchmark smoke tests share: the keys each benchmark writes, one work folder, a tiny run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmarks/ is run from the repository root, not installed

from benchmarks.__main__ import main  # noqa: E402

KEYS: dict[str, tuple[str, ...]] = {
    "ingest": ("ingest_images_per_s_per_core", "dvc_add_full_s", "dvc_noop_repro_full_s"),
    "input": (
        "input_pipeline_speedup_vs_reference",
        "input_pipeline_speedup_vs_reference_compose",
        "augment_fast_path_speedup_vs_compose",
        "augment_fast_path_ms_per_image",
        "augment_compose_ms_per_image",
        "train_step_overhead",
        "train_step_reference_images_per_s",
        "train_step_ours_images_per_s",
    ),
    "gradcam": ("gradcam_batched_speedup",),
    "cam": ("cam_pointing_game", "cam_lung_energy", "cam_ms_per_image", "cam_baseline_ms_per_image"),
    "levers": ("lever_pointing_game", "lever_lung_energy", "lever_none_accuracy", "lever_none_real_dev_accuracy"),
    "pyfunc": ("pyfunc_batch_overhead", "pyfunc_single_latency_ms"),
    "flow": ("flow_overhead_vs_dvc_repro", "flow_overhead_first_run_vs_dvc_repro"),
    "drift": (
        "drift_false_alarm_rate",
        "drift_power_min_cared",
        "drift_false_alarm_rate_uncorrected",
        "drift_false_alarm_rate_this_champion",
    ),
    "gpu": (
        "gpu_resnet18_224_images_per_s",
        "gpu_resnet18_224_ceiling_images_per_s",
        "gpu_resnet18_224_fraction_of_ceiling",
        "gpu_resnet50_224_fraction_of_ceiling",
        "gpu_speedup_vs_reference_style",
        "gpu_gradcam_batched_speedup",
    ),
    "quality": (
        "real_dev_accuracy",
        "real_dev_macro_auc",
        "real_dev_covid_sensitivity",
        "real_dev_reference_accuracy",
        "real_dev_accuracy_gain_vs_reference",
    ),
}


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch):
    """`--threads 1` sets torch's and OpenCV's threads and OMP_NUM_THREADS for the process: undo them afterwards."""
    import cv2
    import torch

    before, cv2_before = torch.get_num_threads(), cv2.getNumThreads()
    monkeypatch.setenv("OMP_NUM_THREADS", str(before))
    monkeypatch.setenv("MKL_NUM_THREADS", str(before))
    yield
    torch.set_num_threads(before)
    cv2.setNumThreads(cv2_before)


def run_tiny(name: str, work: Path, tmp_path: Path, capsys, *options: str) -> dict:
    results = tmp_path / "results.json"
    notes = tmp_path / "RESULTS.md"
    (tmp_path / "results.json").write_text(json.dumps({"earlier_key": 1.5}))
    rc = main(
        [
            name,
            "--size",
            "tiny",
            "--threads",
            "1",
            "--results",
            str(results),
            "--notes",
            str(notes),
            "--work",
            str(work),
            *options,
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0
    assert f"== {name} ==" in printed
    assert not notes.exists()  # tiny runs never add lines to RESULTS.md
    return json.loads(results.read_text())
