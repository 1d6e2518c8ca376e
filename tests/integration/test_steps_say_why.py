"""The evaluate and gradcam steps on a small project: what they apply, and why a measure is missing."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import make_project, tiny_params

from cxr.core.config import load_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(module_tmp: Path):
    """Tiny synthetic data, split, and an untrained checkpoint: what is checked here needs no training."""
    from cxr.data.download import download
    from cxr.data.split import split
    from cxr.model.networks import build_model
    from cxr.training.checkpoints import save_checkpoint

    root = make_project(
        module_tmp / "p",
        tiny_params(download={"synthetic": {"per_class": 10, "size": 96}}, split={"valid": 8, "test": 8}),
    )
    s = load_settings(root / "params.yaml")
    paths = s.paths(root)
    download(s.base, s.download, paths)
    split(s.base, s.split, paths)
    classes = list(s.base.labels)
    model = build_model("resnet18", len(classes), None)
    save_checkpoint(
        paths.best_checkpoint,
        {"model": model.state_dict(), "arch": "resnet18", "classes": classes, "image_size": 48, "epoch": 0},
    )
    return s, paths


@pytest.mark.parametrize(
    "cv",
    [
        {"none": 1.0, "temperature": 0.9, "vector": 0.8, "isotonic": 1.1},
        {"none": 0.7, "temperature": 0.9, "vector": 0.8, "isotonic": 1.1},
    ],
    ids=["vector-helps", "none-helps"],
)
def test_evaluation_and_serving_apply_the_calibration_chosen_on_validation(project, monkeypatch, cv: dict) -> None:
    """The method with the lowest cross-validated NLL is applied when it beats none; the served model, given the
    checkpoint and calibration.json as registration logs them, answers each test image with the probabilities of
    predictions.csv."""
    import types

    import pandas as pd

    from cxr.data.manifest import read_manifest
    from cxr.data.rawstore import RawStore
    from cxr.evaluation import calibrate
    from cxr.evaluation.evaluate import evaluate
    from cxr.serving.pyfunc import CxrClassifier

    s, paths = project
    monkeypatch.setattr(calibrate, "cross_validated_nll", lambda *a, **k: dict(cv))
    evaluate(s.base, s.evaluate, paths, "cpu")
    cal = json.loads(paths.metrics_full.read_text())["calibration"]
    chosen = "vector" if cv["none"] > cv["vector"] else "none"
    assert cal["method"] == chosen and cal["criterion"] == calibrate.CRITERION and cal["valid_cv_nll"] == cv
    assert set(cal["methods"]) == {"none", "temperature", "vector", "isotonic"}
    assert cal["ece"] == cal["methods"][chosen]["ece"] and cal["ece_uncalibrated"] == cal["methods"]["none"]["ece"]
    assert cal["ece_ci_low"] <= cal["ece"] <= cal["ece_ci_high"] and sum(cal["bin_count"]) == 8
    assert json.loads(paths.calibration.read_text())["method"] == chosen

    clf = CxrClassifier()
    artifacts = {"checkpoint": str(paths.best_checkpoint), "calibration": str(paths.calibration)}
    clf.load_context(types.SimpleNamespace(artifacts=artifacts, model_config={}))
    test = read_manifest(paths.manifest).select("test")
    with RawStore(paths.raw) as store:
        images = [store.read(r["path"]) for r in test.rows]
    served = clf.predict(None, pd.DataFrame({"image": images}))
    evaluated = pd.read_csv(paths.predictions)
    columns = [c for c in evaluated.columns if c.startswith("p_")]
    np.testing.assert_allclose(served[columns].to_numpy(), evaluated[columns].to_numpy(), atol=2e-6)
    assert list(served["label"]) == list(evaluated["predicted"])


def test_without_lung_masks_the_metrics_and_the_log_say_why(project, monkeypatch, caplog) -> None:
    from cxr.evaluation import gradcam

    s, paths = project
    real_mask = gradcam.read_mask
    # The older flat layout of the dataset has no lung masks (lesion masks exist only in synthetic data).
    monkeypatch.setattr(
        gradcam, "read_mask", lambda store, rel, size: None if "/masks/" in rel else real_mask(store, rel, size)
    )
    with caplog.at_level(logging.WARNING, logger="cxr.evaluation.gradcam"):
        gradcam.gradcam(s.base, s.gradcam, paths, "cpu")
    metrics = json.loads((paths.gradcam_reports / "metrics.json").read_text())
    assert "lung_energy" not in metrics
    assert "no lung masks" in metrics["lung_energy_absent"] and "8 test images" in metrics["lung_energy_absent"]
    assert "no lung masks" in caplog.text

    monkeypatch.setattr(gradcam, "read_mask", real_mask)
    gradcam.gradcam(s.base, s.gradcam, paths, "cpu")
    metrics = json.loads((paths.gradcam_reports / "metrics.json").read_text())
    assert metrics["lung_mask_images"] == 8 and "lung_energy_absent" not in metrics
    # Each explanation figure with its interval over the test images, drawn as the evaluate step draws its own.
    for key in ("lung_energy", "pointing_game"):
        assert metrics[f"{key}_ci_low"] <= metrics[key] <= metrics[f"{key}_ci_high"], key
    assert metrics["lung_energy_ci_high"] > metrics["lung_energy_ci_low"]
    assert metrics["bootstrap"] == {"n_boot": 1000, "ci": 0.95, "seed": s.base.seed, "stratified": True}


def test_evaluation_writes_all_its_outputs_or_none(project, monkeypatch) -> None:
    """A failure part-way (here, the third figure) leaves every earlier output as it was: no new metrics beside
    old figures, no temporary files."""
    from cxr.evaluation import figures
    from cxr.evaluation.evaluate import evaluate

    s, paths = project
    evaluate(s.base, s.evaluate, paths, "cpu")
    outputs = [*sorted(paths.metrics.iterdir()), paths.metrics_full, paths.calibration, paths.predictions]
    outputs += sorted(paths.eval_reports.glob("*.png"))
    before = {p: p.read_bytes() for p in outputs}
    for p in before:  # what a new run must not leave half-replaced
        p.write_bytes(b"old " + p.name.encode())
    old = {p: p.read_bytes() for p in outputs}

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device", str(paths.eval_reports / "precision_recall.png"))

    monkeypatch.setattr(figures, "plot_pr", broken)
    with pytest.raises(OSError, match="No space left"):
        evaluate(s.base, s.evaluate, paths, "cpu")
    assert {p: p.read_bytes() for p in outputs} == old
    leftovers = [p.name for folder in {paths.eval_reports, paths.metrics.parent} for p in folder.glob(".*.tmp")]
    assert leftovers == []
    monkeypatch.undo()
    evaluate(s.base, s.evaluate, paths, "cpu")
    assert {p: p.read_bytes() for p in outputs} == before


def test_gradcam_replaces_its_outputs_whole(project, monkeypatch) -> None:
    from cxr.evaluation import gradcam as gradcam_module
    from cxr.evaluation.gradcam import gradcam

    s, paths = project
    gradcam(s.base, s.gradcam, paths, "cpu")
    files = sorted(p for p in paths.gradcam_reports.rglob("*") if p.is_file())
    state = {p: p.read_bytes() for p in [*files, paths.cam_metrics]}

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gradcam_module, "write_overlays", broken)
    with pytest.raises(OSError):
        gradcam(s.base, s.gradcam, paths, "cpu")
    assert {p: p.read_bytes() for p in state if p.exists()} == state  # the old folder, whole
    assert not [p for p in paths.gradcam_reports.parent.iterdir() if p.name.startswith(".gradcam")]
