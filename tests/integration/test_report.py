"""The evaluation report: one self-contained HTML page that a headless browser renders with every image."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import make_project, tiny_params

from cxr.core.config import load_settings, parse_settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--virtual-time-budget=5000",
)
# Appended to a copy of the page only: the report itself has no script.
IMAGE_PROBE = """<script>window.addEventListener('load', function () {
  var all = Array.from(document.images);
  var ok = all.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var d = document.createElement('div'); d.id = 'probe';
  d.textContent = 'LOADED=' + ok + ';TOTAL=' + all.length; document.body.appendChild(d);
});</script>"""
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)
PNG_1PX = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


def _fake_outputs(root: Path) -> tuple:
    """Settings and paths with hand-written step outputs, some text hostile to HTML."""
    settings = parse_settings(tiny_params(base={"model_name": "m<script>alert(1)</script>"}))
    paths = settings.paths(root)
    metrics = {
        "n": 4,
        "classes": ["COVID", "Normal"],
        "accuracy": 0.75,
        "accuracy_ci_low": 0.5,
        "accuracy_ci_high": 1.0,
        "per_class": {
            "COVID": {"support": 2, "sensitivity": 0.5, "sensitivity_ci_low": None, "sensitivity_ci_high": None}
        },
        "calibration": {"temperature": 1.5, "ece": 0.1, "brier": 0.2, "ece_uncalibrated": 0.3},
        "per_source": {
            "<b>site</b>": {
                "n": 4,
                "ci": False,
                "accuracy": 0.75,
                "accuracy_ci_low": None,
                "accuracy_ci_high": None,
                "per_class": {"COVID": {"support": 2, "sensitivity": 0.5}},
            }
        },
        "bootstrap": {"n_boot": 10, "ci": 0.95, "stratified": True},
    }
    paths.metrics_full.parent.mkdir(parents=True)
    paths.metrics_full.write_text(json.dumps(metrics))
    paths.eval_reports.mkdir(parents=True)
    (paths.eval_reports / "roc.png").write_bytes(PNG_1PX)
    paths.gradcam_reports.mkdir(parents=True)
    (paths.gradcam_reports / "gallery-COVID.png").write_bytes(PNG_1PX)
    (paths.gradcam_reports / "metrics.json").write_text(
        json.dumps(
            {
                "method": "gradcam",
                "images": 4,
                "pointing_game": 0.3,
                "pointing_game_ci_low": 0.1,
                "pointing_game_ci_high": 0.5,
                "pointing_game_chance": 0.05,
            }
        )
    )
    return settings, paths


def test_report_is_self_contained_and_escaped(tmp_path: Path) -> None:
    from cxr.reporting.report import report
    from cxr.reporting.summary import metrics_markdown

    settings, paths = _fake_outputs(tmp_path)
    out = report(settings, paths)
    assert out == tmp_path / "reports" / "report.html"
    page = out.read_text()
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    assert "<b>site</b>" not in page and "&lt;b&gt;site&lt;/b&gt;" in page
    assert page.count('src="data:image/png;base64,') == 2
    assert not EXTERNAL.search(page)
    assert '0.300 <span class="ci">[0.100, 0.500]</span> (6.0x chance)' in page  # pointing game 0.3, chance 0.05
    assert '0.750 <span class="ci">[0.500, 1.000]</span>' in page
    assert "No data report" in page  # a missing input says so instead of failing
    md = metrics_markdown(json.loads(paths.metrics_full.read_text()))
    assert "| Accuracy | 0.750 [0.500, 1.000] |" in md and "| <b>site</b> | 4 | 0.750 |" in md
    assert not list(out.parent.glob(".*.tmp"))


def test_report_without_metrics_names_the_file_and_writes_nothing(tmp_path: Path) -> None:
    from cxr.reporting.report import report

    settings = parse_settings(tiny_params())
    paths = settings.paths(tmp_path)
    with pytest.raises(FileNotFoundError, match="metrics_full.json"):
        report(settings, paths)
    assert not (tmp_path / "reports").exists()


def _run_pipeline(root: Path) -> None:
    """download, split, train, evaluate and gradcam on small params; test images get two fake sources.

    In process: the same functions the `cxr` steps call (the report's input is their output, not how they ran).
    """
    from cxr.data.download import download
    from cxr.data.split import split
    from cxr.evaluation.evaluate import evaluate
    from cxr.evaluation.gradcam import gradcam
    from cxr.training.loop import train

    s = load_settings(root / "params.yaml")
    paths = s.paths(root)
    download(s.base, s.download, paths)
    split(s.base, s.split, paths)
    train(s.train, s.base, paths, False)
    # Synthetic data has no source metadata; two made-up archives exercise the per-source audit end to end.
    manifest = root / "data" / "split" / "manifest.csv"
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for i, r in enumerate(rows):
        r["source"] = "archive-A" if i % 3 else "archive-B"
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    evaluate(s.base, s.evaluate, paths, s.train.device)
    gradcam(s.base, s.gradcam, paths, s.train.device)


@pytest.mark.slow
def test_report_from_a_pipeline_run_renders_in_chromium(tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium not installed (apt-get install -y --no-install-recommends chromium)")
    from cxr.reporting.report import report

    # Smaller than tiny: the page is the point, not the model (one gallery per class needs one case each).
    root = make_project(
        tmp_path / "p",
        tiny_params(
            download={"synthetic": {"size": 64}},
            train={"image_size": 32},
            evaluate={"n_boot": 20},
            gradcam={"per_class": 1},
        ),
    )
    _run_pipeline(root)
    s = load_settings(root / "params.yaml")
    paths = s.paths(root)
    metrics = json.loads(paths.metrics_full.read_text())
    assert set(metrics["per_source"]) == {"archive-A", "archive-B"}
    assert sum(b["n"] for b in metrics["per_source"].values()) == metrics["n"]
    assert paths.augmentation_preview.stat().st_size > 5000

    out = report(s, paths)
    assert out == root / "reports" / "report.html"
    page = out.read_text()
    assert not EXTERNAL.search(page), EXTERNAL.search(page)
    assert "<script" not in page.lower()
    data_md5 = __import__("yaml").safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]
    for needle in (data_md5, "archive-A", "Pointing game".lower(), "augmentations", "ECE", "COVID vs rest"):
        assert needle.lower() in page.lower(), needle
    # Every evaluation figure and gallery, the training curves drawn from reports/train/history.csv and the
    # augmentation preview the train step drew.
    expected = len(list(paths.eval_reports.glob("*.png"))) + len(list(paths.gradcam_reports.glob("gallery-*.png"))) + 2
    assert page.count('<img src="data:image/png;base64,') == expected >= 10

    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", IMAGE_PROBE + "</body>"))
    proc = _chromium(["--dump-dom", probe.as_uri()], tmp_path / "profile")
    found = re.search(r"LOADED=(\d+);TOTAL=(\d+)", proc.stdout)
    assert found, f"no probe result from chromium: {proc.stderr[-2000:]}"
    loaded, total = int(found[1]), int(found[2])
    assert loaded == total == expected

    shot = tmp_path / "report.png"
    proc = _chromium(["--window-size=1280,2400", f"--screenshot={shot}", out.as_uri()], tmp_path / "profile2")
    assert shot.is_file(), proc.stderr[-2000:]
    import cv2

    image = cv2.imread(str(shot), cv2.IMREAD_GRAYSCALE)
    assert image is not None and image.shape == (2400, 1280)
    assert shot.stat().st_size > 30_000 and float(np.std(image)) > 10  # text, tables and figures, not a blank page


def test_report_shows_lineage_training_curves_params_and_why_a_measure_is_absent(tmp_path: Path) -> None:
    from cxr.reporting.report import report

    settings, paths = _fake_outputs(tmp_path)
    metrics = json.loads(paths.metrics_full.read_text())
    metrics["calibration"] = {
        "method": "none",
        "temperature": 1.0,
        "temperature_fitted": 0.843,
        "criterion": "the method with the lowest 5-fold cross-validated NLL on the validation split",
        "valid_cv_nll": {"none": 0.5, "temperature": 0.51, "vector": 0.52, "isotonic": 0.6},
        "ece": 0.023,
        "ece_ci_low": 0.011,
        "ece_ci_high": 0.048,
        "ece_uncalibrated": 0.023,
        "methods": {
            "none": {"ece": 0.023, "ece_ci_low": 0.011, "ece_ci_high": 0.048, "nll": 0.4},
            "temperature": {"ece": 0.042, "ece_ci_low": 0.03, "ece_ci_high": 0.061, "nll": 0.41},
        },
        "n_bins": 3,
        "bin_count": [0.0, 3.0, 1.0],
        "brier": 0.2,
    }
    paths.metrics_full.write_text(json.dumps(metrics))
    (paths.gradcam_reports / "metrics.json").write_text(
        json.dumps(
            {"method": "gradcam", "images": 4, "lung_energy_absent": "no lung masks in data/raw for the 4 test images"}
        )
    )
    paths.train_reports.mkdir(parents=True)
    (paths.train_reports / "history.csv").write_text(
        "epoch,lr,train_loss,val_loss,val_accuracy,val_macro_f1,images_per_s,seconds\n"
        "1,0.001,1.3,1.2,0.4,0.35,100,1\n2,0.001,1.0,0.9,0.6,0.55,100,1\n3,0.0005,0.8,1.0,0.55,0.5,100,1\n"
    )
    (paths.train_reports / "metrics.json").write_text(
        json.dumps({"val_acc": 0.6, "epoch": 2, "epochs": 3, "img_s": 100.0})
    )
    paths.data_report.parent.mkdir(parents=True)
    paths.data_report.write_text(
        json.dumps(
            {
                "images": 4,
                "counts": {"COVID": {"train": 2, "valid": 1, "test": 1}},
                "duplicates": {"groups": 1, "label_conflicts": [["COVID/images/a.png", "Normal/images/b.png"]]},
                "skipped": [{"path": "COVID/images/<big>.png", "reason": "too large (10000x10000)"}],
            }
        )
    )

    page = report(settings, paths).read_text()
    assert page.count('src="data:image/png;base64,') == 3  # the training curves besides the two figures
    assert "selected epoch (on validation)</td><td>2</td>" in page
    assert "git commit" in page and "not registered yet" in page
    assert "not measured: no lung masks in data/raw for the 4 test images" in page
    # The calibration applied, its test ECE with the interval, every method compared and the reliability bins' counts.
    assert "Applied (served, and used for every test figure): <b>none</b>, chosen as the method with" in page
    assert '<td>test ECE as served</td><td>0.023 <span class="ci">[0.011, 0.048]</span></td>' in page
    assert '<td>temperature</td><td>0.510</td><td>0.042 <span class="ci">[0.030, 0.061]</span></td>' in page
    assert "<td>none (applied)</td>" in page and "(3 bins of top-1 confidence, low to high): 0, 3, 1." in page
    assert "<code>COVID/images/&lt;big&gt;.png</code></td><td>too large (10000x10000)</td>" in page
    # A parameter table, one row per key, instead of a JSON dump.
    assert "<pre>" not in page
    assert "<td><code>train.augment.rotate_deg</code></td><td>10.0</td>" in page
    assert "<td><code>download.max_pixels</code></td><td>25000000</td>" in page
    # What differs from the defaults is said first and marked: tiny params train for 2 epochs, not 8.
    assert "parameters differ from the defaults" in page
    assert "<td><code>train.epochs</code></td><td><b>2</b></td><td>8</td>" in page
    # A conflicting-labels group is explained and named, not only counted.
    assert "near-copies filed under different classes" in page
    assert "<code>COVID/images/a.png</code>, <code>Normal/images/b.png</code>" in page
    # The page built by the report stage says where the drift check's result is (it comes after the page).
    assert "reports/drift.json" in page and "<code>cxr drift</code>" in page

    page = report(
        settings,
        paths,
        tmp_path / "registered.html",
        registered={"run_id": "abc123", "name": "cxr-classifier", "version": "7"},
    ).read_text()
    assert "<code>abc123</code>" in page and "cxr-classifier version 7" in page and "not registered yet" not in page
