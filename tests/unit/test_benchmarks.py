"""Smoke test of `python -m benchmarks`: each benchmark runs at its tiny size and writes its keys."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # benchmarks/ is run from the repository root, not installed

from benchmarks import BENCHMARKS  # noqa: E402
from benchmarks.__main__ import main  # noqa: E402
from benchmarks.common import Figure, Outcome, record_lines, write_results  # noqa: E402

KEYS: dict[str, tuple[str, ...]] = {
    "ingest": ("ingest_images_per_s_per_core", "dvc_add_full_s", "dvc_noop_repro_full_s"),
    "input": ("input_pipeline_speedup_vs_reference", "train_step_overhead", "train_step_reference_images_per_s",
              "train_step_ours_images_per_s"),
    "gradcam": ("gradcam_batched_speedup",),
    "pyfunc": ("pyfunc_batch_overhead", "pyfunc_single_latency_ms"),
    "flow": ("flow_overhead_vs_dvc_repro", "flow_overhead_first_run_vs_dvc_repro"),
    "gpu": ("gpu_resnet18_224_images_per_s", "gpu_resnet18_224_ceiling_images_per_s",
            "gpu_resnet18_224_fraction_of_ceiling", "gpu_resnet50_224_fraction_of_ceiling",
            "gpu_speedup_vs_reference_style", "gpu_gradcam_batched_speedup"),
    "quality": ("real_dev_accuracy", "real_dev_macro_auc", "real_dev_covid_sensitivity", "real_dev_reference_accuracy",
                "real_dev_accuracy_gain_vs_reference"),
}


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    """`--threads 1` sets torch's and OpenCV's threads and OMP_NUM_THREADS for the process: undo them afterwards."""
    import cv2
    import torch

    before, cv2_before = torch.get_num_threads(), cv2.getNumThreads()
    monkeypatch.setenv("OMP_NUM_THREADS", str(before))
    monkeypatch.setenv("MKL_NUM_THREADS", str(before))
    yield
    torch.set_num_threads(before)
    cv2.setNumThreads(cv2_before)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """One work folder for the module, so the tiny synthetic dataset is generated once."""
    return tmp_path_factory.mktemp("bench-work")


def _run(name: str, work: Path, tmp_path: Path, capsys) -> dict:
    results = tmp_path / "results.json"
    notes = tmp_path / "RESULTS.md"
    (tmp_path / "results.json").write_text(json.dumps({"earlier_key": 1.5}))
    rc = main([name, "--size", "tiny", "--threads", "1", "--results", str(results), "--notes", str(notes),
               "--work", str(work)])
    printed = capsys.readouterr().out
    assert rc == 0
    assert f"== {name} ==" in printed
    assert not notes.exists()  # tiny runs never add lines to RESULTS.md
    return json.loads(results.read_text())


def test_every_benchmark_has_keys() -> None:
    assert set(KEYS) == set(BENCHMARKS)


@pytest.mark.parametrize("name", ["ingest", "input", "gradcam", "pyfunc"])
def test_benchmark_runs_tiny_and_writes_keys(name: str, work: Path, tmp_path: Path, capsys) -> None:
    data = _run(name, work, tmp_path, capsys)
    if name == "pyfunc" and "pyfunc_batch_overhead" not in data:
        pytest.skip("cxr.serving absent: the pyfunc benchmark skipped itself")
    for key in KEYS[name]:
        assert isinstance(data[key], (int, float)) and data[key] > 0, key
    assert data["earlier_key"] == 1.5  # merged, not overwritten
    assert data["machine"]["cpu_count"] >= 1 and data["machine"]["torch"]
    assert data["machine"]["torch_threads"] == 1


@pytest.mark.slow
def test_quality_benchmark_runs_tiny_through_the_pipeline_steps(work: Path, tmp_path: Path, capsys) -> None:
    data = _run("quality", work, tmp_path, capsys)
    for key in KEYS["quality"]:
        assert isinstance(data[key], (int, float)), key
    assert 0 <= data["real_dev_accuracy"] <= 1 and 0 <= data["real_dev_reference_accuracy"] <= 1
    assert data["real_dev_accuracy_gain_vs_reference"] == pytest.approx(
        data["real_dev_accuracy"] - data["real_dev_reference_accuracy"], abs=1e-3)
    assert data["real_dev_images"] == 24 and data["real_dev_epochs"] == 1
    assert data["real_dev_train_s"] > 0 and data["real_dev_reference_images_per_s"] > 0
    assert 0 <= data["real_dev_format_probe_accuracy"] <= 1  # the shortcut probe ran in evaluation


def test_quality_budget_cuts_epochs() -> None:
    from benchmarks.quality import BUDGET_EPOCH_PIXELS, fit_budget, recipes

    assert fit_budget({"image_size": 128, "epochs": 30})["epochs"] == 8
    assert fit_budget({"image_size": 96, "epochs": 30})["epochs"] == BUDGET_EPOCH_PIXELS // 96**2
    with pytest.raises(ValueError, match="image_size=2048"):
        fit_budget({"image_size": 2048, "epochs": 1})
    full = recipes("full")
    ref, ours = full["reference"], full["ours"]
    assert ref["lr"] == 3e-5 and ref["batch_size"] == 16 and ref["augment"]["hflip"] == 0.5
    assert ref["image_size"] == ours["image_size"] and ref["epochs"] == ours["epochs"]  # the same budget
    assert ours["weights"] is None and ref.get("ema_decay") is None  # from scratch; no recipe feature of ours
    assert ref["mixup"] == 0.0


@pytest.mark.slow
def test_flow_benchmark_runs_tiny(work: Path, tmp_path: Path, capsys) -> None:
    data = _run("flow", work, tmp_path, capsys)
    assert data["flow_overhead_vs_dvc_repro"] > 0
    assert data["flow_s"] > data["flow_prefect_trivial_served_s"] > 0
    assert data["flow_first_run_s"] > data["flow_prefect_trivial_s"] > 0
    assert data["flow_dvc_gate_s"] > 0  # the baseline does what the flow does, the promotion gate included


def test_unknown_benchmark_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["nope", "--results", str(tmp_path / "r.json")])
    assert not (tmp_path / "r.json").exists()


def test_results_merge_and_dated_lines(tmp_path: Path) -> None:
    results, notes = tmp_path / "results.json", tmp_path / "RESULTS.md"
    results.write_text(json.dumps({"old": 2, "x": 0.0}))
    outcome = Outcome("demo", figures=[Figure("x", 420.0, (">=", 400)), Figure("y", 4.0, ("<", 3))])
    data = write_results(results, [outcome])
    assert data["old"] == 2 and data["x"] == 420.0 and data["y"] == 4.0
    lines = record_lines(notes, [outcome], "python -m benchmarks demo")
    assert len(lines) == 2
    assert "`x` = 420 (goal >= 400): met" in lines[0]
    assert "`y` = 4 (goal < 3): missed" in lines[1]
    assert notes.read_text().count("python -m benchmarks demo") == 2


def test_corrupt_results_file_is_named(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text("{not json")
    with pytest.raises(ValueError, match="results.json"):
        write_results(results, [Outcome("demo")])
    assert results.read_text() == "{not json"  # left as it was


@pytest.mark.parametrize("size", ["tiny", "full"])
def test_gpu_benchmark_refuses_without_cuda(size: str, work: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("BENCH_GPU_ON_CPU", raising=False)
    results, notes = tmp_path / "results.json", tmp_path / "RESULTS.md"
    results.write_text(json.dumps({"earlier_key": 1.5}))
    rc = main(["gpu", "--size", size, "--results", str(results), "--notes", str(notes), "--work", str(work)])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "skipped: no CUDA device" in printed and "nothing measured or recorded" in printed
    assert json.loads(results.read_text()) == {"earlier_key": 1.5}  # nothing recorded
    assert not notes.exists()


@pytest.mark.slow
def test_gpu_benchmark_dry_run_on_the_cpu(work: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """The GPU benchmark's whole logic at the tiny size on the CPU, so that it runs first time on a GPU."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("BENCH_GPU_ON_CPU", "1")
    data = _run("gpu", work, tmp_path, capsys)
    for key in KEYS["gpu"]:
        assert isinstance(data[key], (int, float)) and data[key] > 0, key
    assert data["gpu_device"] == "CPU (dry run)"
    assert data["gpu_resnet18_device_images_per_s"] > 0 and data["gpu_resnet18_cpu_images_per_s"] > 0
    assert data["gpu_gradcam_max_abs_diff"] < 1e-3
