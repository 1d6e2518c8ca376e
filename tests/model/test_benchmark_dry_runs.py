"""The benchmarks that train, at their tiny sizes: the recipe judge on real-dev look-alikes, the GPU one on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchsupport import KEYS, restore_threads, run_tiny  # noqa: F401  (restore_threads: an autouse fixture)


@pytest.mark.slow
def test_quality_benchmark_runs_tiny_through_the_pipeline_steps(work: Path, tmp_path: Path, capsys) -> None:
    """Side by side (``--jobs 2``, each run in its own process), with the figures of one run after the other."""
    from benchmarks import quality

    data = run_tiny("quality", work, tmp_path, capsys, "--jobs", "2")
    for key in KEYS["quality"]:
        assert isinstance(data[key], (int, float)), key
    assert 0 <= data["real_dev_accuracy"] <= 1 and 0 <= data["real_dev_reference_accuracy"] <= 1
    assert data["real_dev_accuracy_gain_vs_reference"] == pytest.approx(
        data["real_dev_accuracy"] - data["real_dev_reference_accuracy"], abs=1e-3
    )
    assert data["real_dev_images"] == 24 and data["real_dev_epochs"] == 1
    assert data["real_dev_train_s"] > 0 and data["real_dev_reference_images_per_s"] > 0
    assert 0 <= data["real_dev_format_probe_accuracy"] <= 1  # the shortcut probe ran in evaluation
    assert data["real_dev_jobs"] == 2

    one_by_one = quality.run("tiny", tmp_path / "one-by-one", jobs=1).extra
    figures = [k for k in one_by_one if "accuracy" in k or "auc" in k or "sensitivity" in k]
    assert len(figures) > 20
    assert {k: data[k] for k in figures} == {k: round(float(one_by_one[k]), 4) for k in figures}  # as results.json


@pytest.mark.slow
def test_gpu_benchmark_dry_run_on_the_cpu(work: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """The GPU benchmark's whole logic at the tiny size on the CPU, so that it runs first time on a GPU."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("BENCH_GPU_ON_CPU", "1")
    data = run_tiny("gpu", work, tmp_path, capsys)
    for key in KEYS["gpu"]:
        assert isinstance(data[key], (int, float)) and data[key] > 0, key
    assert data["gpu_device"] == "CPU (dry run)"
    assert data["gpu_resnet18_device_images_per_s"] > 0 and data["gpu_resnet18_cpu_images_per_s"] > 0
    assert data["gpu_gradcam_max_abs_diff"] < 1e-3


@pytest.mark.slow
def test_drift_benchmark_runs_tiny_through_the_pipeline_steps(work: Path, tmp_path: Path, capsys) -> None:
    """A champion trained by the pipeline's steps, no-change and shifted trials, every key written."""
    data = run_tiny("drift", work, tmp_path, capsys)
    for key in KEYS["drift"]:
        assert 0.0 <= data[key] <= 1.0, key


@pytest.mark.slow
def test_cam_benchmark_runs_tiny_on_a_model_the_pipeline_trained(work: Path, tmp_path: Path, capsys) -> None:
    """Every round, ROAD on the shortlist, every key written; the table names the choice and the noise floor."""
    data = run_tiny("cam", work, tmp_path, capsys)
    for key in KEYS["cam"]:
        assert isinstance(data[key], (int, float)) and data[key] >= 0, key
    assert data["cam_method"] and data["cam_stride"] in (8, 16, 32) and data["cam_configs"] >= 8
    assert data["cam_noise_road"] is not None and data["cam_baseline_road"] is not None
    assert data["cam_pointing_game_ci_low"] <= data["cam_pointing_game"] <= data["cam_pointing_game_ci_high"]
    table = (work / "cam-tiny-table.md").read_text()
    assert "(chosen)" in table or "(previous default)" in table
    assert table.splitlines()[-1].startswith("| noise |")


@pytest.mark.slow
def test_levers_benchmark_runs_tiny_on_synthetic_and_on_a_cxr_dev_look_alike(
    work: Path, tmp_path: Path, capsys
) -> None:
    """Every lever trained by the pipeline's steps, the cxr-dev runs only where a lever changes anything there."""
    from benchmarks.levers import LEVERS

    data = run_tiny("levers", work, tmp_path, capsys, "--jobs", "2")
    for key in KEYS["levers"]:
        assert isinstance(data[key], (int, float)), key
    assert data["lever_chosen"] in LEVERS and data["lever_explainer"]
    assert data["lever_none_accuracy_ci_low"] <= data["lever_none_accuracy"] <= data["lever_none_accuracy_ci_high"]
    # Without masks on cxr-dev, the lung-attention lever's figures there are those of the run without it.
    assert data["lever_lung_attention_1_real_dev_accuracy"] == data["lever_none_real_dev_accuracy"]
    table = (work / "levers-tiny-table.md").read_text()
    assert "| none |" in table and "(no masks: the run of output stride 16)" in table
