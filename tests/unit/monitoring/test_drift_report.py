"""The drift report: planted shifts (exposure, noise, class mix) on synthetic X-rays are flagged, two halves of
one set are not; its metrics, its report section and its file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr.core.sections import Drift
from cxr.data.synthetic import SYNTHETIC_CLASSES, render
from cxr.monitoring.drift import penultimate_features
from cxr.monitoring.report import Sample, compare_samples

SIZE = 64


PER_CLASS = 40


CFG = Drift(alpha=0.01, permutations=600)


@pytest.fixture(scope="module")
def dataset() -> tuple[np.ndarray, np.ndarray]:
    """Synthetic chest X-rays, shuffled: (images (N, S, S) uint8, class names)."""
    images, labels = [], []
    for cls in SYNTHETIC_CLASSES:
        for i in range(PER_CLASS):
            images.append(render(cls, i, seed=3, size=SIZE)[0])
            labels.append(cls)
    order = np.random.default_rng(0).permutation(len(images))
    return np.stack(images)[order], np.array(labels)[order]


@pytest.fixture(scope="module")
def embed():
    """Penultimate features of a seeded, untrained ResNet-18: a stand-in champion."""
    from cxr.model.networks import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", len(SYNTHETIC_CLASSES))
    return lambda images: penultimate_features(model, images)


def _sample(images: np.ndarray, labels: np.ndarray) -> Sample:
    return Sample(images, tuple(labels), tuple(f"{SIZE}x{SIZE}" for _ in labels), tuple("L" for _ in labels))


def _halves(dataset):
    images, labels = dataset
    half = len(images) // 2
    return (images[:half], labels[:half]), (images[half:], labels[half:])


def test_two_halves_of_one_set_show_no_drift(dataset, embed) -> None:
    (xa, ya), (xb, yb) = _halves(dataset)
    report = compare_samples(_sample(xa, ya), _sample(xb, yb), embed, CFG, seed=0)
    assert not report.flagged, report.markdown()
    assert report.tests["embedding_mmd"]["p"] > 0.05
    assert report.tests["class_mix"]["p"] > 0.05
    assert report.tests["intensity"]["p"] > 0.05


def _exposure(images: np.ndarray) -> np.ndarray:
    """A brighter, flatter exposure: gray levels pulled towards white."""
    return np.clip(images.astype(np.float32) * 0.75 + 60, 0, 255).astype(np.uint8)


def _noise(images: np.ndarray) -> np.ndarray:
    """Detector noise (sigma 20 gray levels)."""
    rng = np.random.default_rng(1)
    return np.clip(images + rng.normal(0, 20, images.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shift", [_exposure, _noise], ids=["exposure", "noise"])
def test_planted_image_shift_is_flagged(dataset, embed, shift) -> None:
    (xa, ya), (xb, yb) = _halves(dataset)
    report = compare_samples(_sample(xa, ya), _sample(shift(xb), yb), embed, CFG, seed=0)
    assert report.flagged
    assert report.tests["embedding_mmd"]["p"] < CFG.alpha
    assert report.tests["class_mix"]["p"] > CFG.alpha  # the labels did not move
    assert any(r.startswith("embedding_mmd") for r in report.reasons)


def test_planted_class_mix_is_flagged(dataset, embed) -> None:
    (xa, ya), (xb, yb) = _halves(dataset)
    keep = np.isin(yb, ["COVID", "Viral Pneumonia"])
    report = compare_samples(_sample(xa, ya), _sample(xb[keep], yb[keep]), embed, CFG, seed=0)
    assert report.flagged
    assert report.tests["class_mix"]["p"] < CFG.alpha
    assert report.counts["current"].get("Normal", 0) == 0
    assert "DRIFT" in report.markdown()


def test_metrics_are_flat_numbers(dataset, embed) -> None:
    (xa, ya), (xb, yb) = _halves(dataset)
    report = compare_samples(_sample(xa[:20], ya[:20]), _sample(xb[:20], yb[:20]), embed, CFG, seed=0)
    m = report.metrics()
    assert {"drift/flagged", "drift/embedding_mmd_p", "drift/class_mix_p", "drift/intensity_p"} <= set(m)
    assert all(isinstance(v, float) for v in m.values())


def test_report_section_and_round_trip(dataset, embed, tmp_path) -> None:
    from cxr.monitoring.report import read_report, write_report
    from cxr.reporting.drift_section import drift_sections

    assert drift_sections(tmp_path / "none.json") == []
    (xa, ya), (xb, yb) = _halves(dataset)
    report = compare_samples(_sample(xa, ya), _sample(_exposure(xb), yb), embed, CFG, seed=0)
    report.reference, report.current, report.champion_version = "ref <split>", "new", "3"
    write_report(report, tmp_path / "drift.json")
    assert read_report(tmp_path / "drift.json") == report
    [(sid, _, html)] = drift_sections(tmp_path / "drift.json")
    assert sid == "drift"
    assert "Drift flagged" in html and "embedding_mmd" in html and "ref &lt;split&gt;" in html
