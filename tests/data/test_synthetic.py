"""Tests for the deterministic synthetic chest-X-ray generator (cxr.data.synthetic)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from cxr.data.synthetic import SYNTHETIC_CLASSES, SyntheticSummary, generate, render

COUNTS = {"COVID": 3, "Normal": 2, "Lung_Opacity": 3, "Viral Pneumonia": 2}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def two_runs(module_tmp: Path) -> tuple[Path, Path, SyntheticSummary]:
    a = module_tmp / "a"
    b = module_tmp / "b"
    summary = generate(a, COUNTS, size=299, seed=7, workers=1)
    generate(b, dict(reversed(list(COUNTS.items()))), size=299, seed=7, workers=2, progress=True)
    return a, b, summary


def test_generate_is_deterministic_across_workers(two_runs):
    a, b, _ = two_runs
    fa, fb = _files(a), _files(b)
    assert fa.keys() == fb.keys()
    for name in fa:
        assert fa[name] == fb[name], name


def test_layout_and_formats(two_runs):
    root, _, summary = two_runs
    assert summary.root == root
    assert summary.size == 299
    assert summary.counts == COUNTS
    meta = json.loads((root / "synthetic.json").read_text())
    assert meta["seed"] == 7 and meta["size"] == 299 and meta["counts"] == COUNTS
    assert "version" in meta

    expected = {"synthetic.json"}
    for cls, n in COUNTS.items():
        for sub in ("images", "masks", "lesions"):
            expected |= {f"{cls}/{sub}/{cls}-{i}.png" for i in range(1, n + 1)}
    assert set(_files(root)) == expected

    for cls, n in COUNTS.items():
        for i in range(1, n + 1):
            with Image.open(root / cls / "images" / f"{cls}-{i}.png") as im:
                assert im.mode == "L" and im.size == (299, 299)
                img = np.asarray(im)
            assert img.std() > 10  # not blank
            with Image.open(root / cls / "masks" / f"{cls}-{i}.png") as im:
                assert im.mode == "L" and im.size == (256, 256)
                mask = np.asarray(im)
            assert set(np.unique(mask)) <= {0, 255}
            assert 0.10 < (mask > 0).mean() < 0.6
            with Image.open(root / cls / "lesions" / f"{cls}-{i}.png") as im:
                assert im.mode == "L" and im.size == (299, 299)
                lesion = np.asarray(im)
            assert set(np.unique(lesion)) <= {0, 255}
            assert (lesion.max() == 0) == (cls == "Normal")


def test_render_is_pure():
    for cls in SYNTHETIC_CLASSES:
        a = render(cls, 5, seed=3, size=128)
        b = render(cls, 5, seed=3, size=128)
        for x, y in zip(a, b, strict=True):
            assert x.dtype == np.uint8 and x.shape == (128, 128)
            assert np.array_equal(x, y)
    # different index / seed / class give different images
    assert not np.array_equal(render("Normal", 1, 0, 128)[0], render("Normal", 2, 0, 128)[0])
    assert not np.array_equal(render("Normal", 1, 0, 128)[0], render("Normal", 1, 1, 128)[0])


@pytest.mark.parametrize("cls", SYNTHETIC_CLASSES)
def test_lesions_inside_lungs(cls):
    for i in range(12):
        _, lung, lesion = render(cls, i, seed=11, size=160)
        assert set(np.unique(lung)) <= {0, 255}
        assert set(np.unique(lesion)) <= {0, 255}
        les = lesion > 0
        outside = np.logical_and(les, lung == 0).sum()
        assert outside <= 0.01 * max(1, les.sum())
        if cls == "Normal":
            assert not les.any()
        else:
            assert les.sum() > 10, (cls, i)


# ---------------------------------------------------------------- leakage checks

N_PER_CLASS = 100
SIZE = 128


@pytest.fixture(scope="module")
def sample_set():
    images, lungs, labels = [], [], []
    for k, cls in enumerate(SYNTHETIC_CLASSES):
        for i in range(N_PER_CLASS):
            img, lung, _ = render(cls, i, seed=123, size=SIZE)
            images.append(img)
            lungs.append(lung > 0)
            labels.append(k)
    return images, lungs, np.array(labels)


def _stats(v: np.ndarray) -> list[float]:
    v = v.astype(np.float64)
    return [v.mean(), v.std(), *np.percentile(v, [5, 25, 50, 75, 95])]


def _cv_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    return float(cross_val_score(clf, x, y, cv=cv).mean())


def test_global_intensity_stats_do_not_reveal_class(sample_set):
    images, _, y = sample_set
    feats = []
    for img in images:
        hist = np.bincount(img.ravel() // 16, minlength=16) / img.size
        feats.append(_stats(img) + list(hist))
    acc = _cv_accuracy(np.array(feats), y)
    assert acc < 0.40, f"global intensity features predict the class: acc={acc:.3f}"


def test_lung_features_do_reveal_class(sample_set):
    """Positive control: the same classifier on in-lung features must do clearly better.

    The generator matches the lung-pixel histogram to the lesion-free one, so
    the class shows in *where* lung intensity sits (zones) and in texture, which
    is what these features measure (on the per-image standardised image).
    """
    images, lungs, y = sample_set
    feats = []
    for img, lung in zip(images, lungs, strict=True):
        f = img.astype(np.float32)
        f = (f - f.mean()) / (f.std() + 1e-6)
        inner = cv2.erode(lung.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        lap = np.abs(cv2.Laplacian(f, cv2.CV_32F))
        rows, cols = np.nonzero(inner)
        v = f[rows, cols]
        lower = rows > np.median(rows)
        dist = np.abs(cols - (SIZE - 1) / 2)
        lateral = dist > np.median(dist)
        zones = [v[lower & lateral].mean() - v.mean(), v[~lower & ~lateral].mean() - v.mean()]
        feats.append(_stats(v) + [lap[inner].mean()] + zones)
    acc = _cv_accuracy(np.array(feats), y)
    assert acc > 0.60, f"in-lung features too weak: acc={acc:.3f}"


# ---------------------------------------------------------------- bad arguments


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="Pneumothorax"):
        generate(tmp_path, {"Pneumothorax": 1})
    with pytest.raises(ValueError, match="COVID"):
        generate(tmp_path, {"COVID": -1})
    with pytest.raises(ValueError, match="size"):
        generate(tmp_path, {"COVID": 1}, size=32)
    with pytest.raises(ValueError, match="Pneumothorax"):
        render("Pneumothorax", 0, 0)
    with pytest.raises(ValueError, match="size"):
        render("COVID", 0, 0, size=63)
    assert not any(tmp_path.iterdir())  # nothing written on bad input
