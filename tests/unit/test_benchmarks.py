"""Smoke test of `python -m benchmarks`: each quick benchmark runs at its tiny size and writes its keys.

The ones that train or run the whole flow have their own modules (tests/model, tests/integration), so that
the test workers run them side by side.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# benchsupport first: it puts the repository root on sys.path for `benchmarks`.
from benchsupport import KEYS, restore_threads, run_tiny  # noqa: F401  (restore_threads: an autouse fixture)

from benchmarks import BENCHMARKS
from benchmarks.__main__ import main
from benchmarks.common import Figure, Outcome, record_lines, write_results


def test_every_benchmark_has_keys() -> None:
    assert set(KEYS) == set(BENCHMARKS)


@pytest.mark.parametrize("name", ["ingest", "input", "gradcam", "pyfunc"])
def test_benchmark_runs_tiny_and_writes_keys(name: str, work: Path, tmp_path: Path, capsys) -> None:
    data = run_tiny(name, work, tmp_path, capsys)
    if name == "pyfunc" and "pyfunc_batch_overhead" not in data:
        pytest.skip("cxr.serving.pyfunc absent: the pyfunc benchmark skipped itself")
    for key in KEYS[name]:
        assert isinstance(data[key], (int, float)) and data[key] > 0, key
    assert data["earlier_key"] == 1.5  # merged, not overwritten
    assert data["machine"]["cpu_count"] >= 1 and data["machine"]["torch"]
    assert data["machine"]["torch_threads"] == 1


def test_quality_budget_cuts_epochs() -> None:
    from benchmarks.quality import BUDGET_EPOCH_PIXELS, fit_budget, recipes

    assert fit_budget({"image_size": 128, "epochs": 30})["epochs"] == 8
    assert fit_budget({"image_size": 96, "epochs": 30})["epochs"] == BUDGET_EPOCH_PIXELS // 96**2
    with pytest.raises(ValueError, match="image_size=2048"):
        fit_budget({"image_size": 2048, "epochs": 1})
    full = recipes("full")
    ref, ours = full["reference"], full["ours"]
    assert ref["lr"] == 3e-5 and ref["batch_size"] == 16 and ref["augment"]["hflip"] == 0.5
    assert ref["optimizer"] == "adamw" and ref["weight_decay"] == 0.0  # Adam, whatever optimiser ours uses
    assert ref["image_size"] == ours["image_size"] and ref["epochs"] == ours["epochs"]  # the same budget
    assert ours["weights"] is None and ref.get("ema_decay") is None  # from scratch; no recipe feature of ours
    assert ref["mixup"] == 0.0


def test_quality_runs_write_only_their_own_files(tmp_path: Path) -> None:
    """Two recipes on one split share the data and the split, and nothing they write: no run reads another's figures."""
    from benchmarks.quality import recipes, settings_for

    shared = {"raw", "cache", "manifest", "data_report"}
    runs = [settings_for(tmp_path, "tiny", 0, name, train).paths(tmp_path) for name, train in recipes("tiny").items()]
    a, b = (r.model_dump() for r in runs)
    assert {k for k in a if a[k] == b[k]} == shared | {"root"}
    other_seed = settings_for(tmp_path, "tiny", 1, "ours", recipes("tiny")["ours"]).paths(tmp_path).model_dump()
    assert {k for k in a if a[k] == other_seed[k]} == {"raw", "cache", "root"}


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


def test_quality_runs_side_by_side_raise_the_first_failure(tmp_path: Path) -> None:
    """With ``--jobs``, a run that fails in its process fails the benchmark with its own error, naming the run."""
    from benchmarks.quality import recipes, run_all

    bad = {name: {**train, "image_size": 1} for name, train in recipes("tiny").items()}  # refused by validation
    with pytest.raises(ValueError, match=r"(?s)quality benchmark \((ours|reference), split seed 0\).*image_size"):
        run_all(tmp_path, tmp_path, "tiny", bad, jobs=2)
