"""Classification metrics with bootstrap intervals: known answers, scikit-learn's values, per-source tables, the
Youden threshold, and the train step's macro F1."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scores_support import CLASSES, _synthetic
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from cxr.ops.tracking import flat_metrics
from cxr.stats.classification import _weighted_auc, choose_threshold, classification_metrics, per_source_metrics


def _probs_from_preds(pred: np.ndarray, k: int, conf: float = 0.7) -> np.ndarray:
    """Probabilities whose argmax is pred."""
    p = np.full((pred.size, k), (1 - conf) / (k - 1))
    p[np.arange(pred.size), pred] = conf
    return p


def _iter_values(obj):
    """Yield all leaf values of nested dicts/lists."""
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _iter_values(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _iter_values(v)
    else:
        yield obj


def test_perfect_predictions_all_one() -> None:
    y = np.repeat(np.arange(4), 25)
    p = _probs_from_preds(y, 4, conf=0.9)
    m = classification_metrics(y, p, CLASSES, n_boot=200)
    keys = [
        "accuracy",
        "macro_precision",
        "macro_sensitivity",
        "macro_specificity",
        "macro_f1",
        "weighted_f1",
        "macro_auc",
    ]
    for key in keys:
        for suffix in ("", "_ci_low", "_ci_high"):
            assert m[key + suffix] == pytest.approx(1.0), key + suffix
    for name in CLASSES:
        block = m["per_class"][name]
        assert block["support"] == 25
        for metric in ("precision", "sensitivity", "specificity", "f1", "auc"):
            for suffix in ("", "_ci_low", "_ci_high"):
                assert block[metric + suffix] == pytest.approx(1.0)
    assert m["confusion_matrix"] == (np.eye(4, dtype=int) * 25).tolist()
    assert m["n"] == 100
    assert m["binary"]["sensitivity"] == 1.0 and m["binary"]["specificity"] == 1.0


def test_known_confusion_matrix() -> None:
    # rows: true, cols: predicted
    cm = np.array([[8, 1, 1], [2, 6, 2], [0, 3, 7]])
    y = np.concatenate([np.full(cm[i].sum(), i) for i in range(3)])
    pred = np.concatenate([np.repeat(np.arange(3), cm[i]) for i in range(3)])
    m = classification_metrics(y, _probs_from_preds(pred, 3), ["a", "b", "c"], positive=None, n_boot=50)
    assert m["confusion_matrix"] == cm.tolist()
    assert "binary" not in m
    # hand-computed: class a: tp=8, fp=2, fn=2, tn=18
    a = m["per_class"]["a"]
    assert a["precision"] == pytest.approx(8 / 10)
    assert a["sensitivity"] == pytest.approx(8 / 10)
    assert a["specificity"] == pytest.approx(18 / 20)
    assert a["f1"] == pytest.approx(0.8)
    # class b: tp=6, fp=4, fn=4, tn=16
    b = m["per_class"]["b"]
    assert b["precision"] == pytest.approx(0.6)
    assert b["sensitivity"] == pytest.approx(0.6)
    assert b["specificity"] == pytest.approx(16 / 20)
    # class c: tp=7, fp=3, fn=3, tn=17
    c = m["per_class"]["c"]
    assert c["precision"] == pytest.approx(0.7)
    assert c["specificity"] == pytest.approx(17 / 20)
    assert m["accuracy"] == pytest.approx(21 / 30)
    assert m["macro_precision"] == pytest.approx(precision_score(y, pred, average="macro"))
    assert m["macro_sensitivity"] == pytest.approx(recall_score(y, pred, average="macro"))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert m["macro_specificity"] == pytest.approx(np.mean([0.9, 0.8, 0.85]))


def test_matches_sklearn_on_random_data() -> None:
    y, p = _synthetic(300, seed=3)
    m = classification_metrics(y, p, CLASSES, n_boot=10)
    pred = p.argmax(1)
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    for c, name in enumerate(CLASSES):
        assert m["per_class"][name]["auc"] == pytest.approx(roc_auc_score(y == c, p[:, c]))
    assert m["macro_auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))


def test_weighted_auc_handles_ties_and_weights() -> None:
    rng = np.random.default_rng(1)
    s = rng.integers(0, 5, size=60).astype(float)  # many ties
    pos = rng.random(60) < 0.4
    assert _weighted_auc(s, pos, np.ones((1, 60)))[0] == pytest.approx(roc_auc_score(pos, s))
    idx = rng.integers(0, 60, size=60)
    w = np.bincount(idx, minlength=60)[None].astype(float)
    assert _weighted_auc(s, pos, w)[0] == pytest.approx(roc_auc_score(pos[idx], s[idx]))


def test_ci_contains_point_and_narrows() -> None:
    widths = []
    for n in (100, 1600):
        y, p = _synthetic(n, seed=5)
        m = classification_metrics(y, p, CLASSES, n_boot=300, seed=1)
        for key in ("accuracy", "macro_f1", "macro_auc", "weighted_f1"):
            assert m[f"{key}_ci_low"] <= m[key] <= m[f"{key}_ci_high"]
        for block in m["per_class"].values():
            assert block["sensitivity_ci_low"] <= block["sensitivity"] <= block["sensitivity_ci_high"]
        widths.append(m["accuracy_ci_high"] - m["accuracy_ci_low"])
    assert widths[1] < widths[0] / 2


def test_deterministic_with_seed() -> None:
    y, p = _synthetic(200, seed=2)
    a = classification_metrics(y, p, CLASSES, n_boot=100, seed=7)
    b = classification_metrics(y, p, CLASSES, n_boot=100, seed=7)
    c = classification_metrics(y, p, CLASSES, n_boot=100, seed=8)
    assert a == b
    assert a["macro_auc_ci_low"] != c["macro_auc_ci_low"] or a["accuracy_ci_low"] != c["accuracy_ci_low"]


def test_plain_bootstrap_runs() -> None:
    y, p = _synthetic(60, seed=2)
    m = classification_metrics(y, p, CLASSES, n_boot=100, stratified=False)
    assert m["accuracy_ci_low"] <= m["accuracy"] <= m["accuracy_ci_high"]
    assert m["bootstrap"]["stratified"] is False


def test_zero_support_class() -> None:
    y, p = _synthetic(80, seed=4)
    y = np.where(y == 3, 0, y)  # class 3 absent
    m = classification_metrics(y, p, CLASSES, n_boot=50)
    block = m["per_class"]["Viral Pneumonia"]
    assert block["support"] == 0
    assert block["auc"] is None and block["auc_ci_low"] is None and block["auc_ci_high"] is None
    assert block["sensitivity"] is None
    assert m["macro_auc"] is not None
    assert not any(isinstance(v, float) and not np.isfinite(v) for v in _iter_values(m))
    json.dumps(m, allow_nan=False)


def test_json_serialisable_and_plain_types() -> None:
    y, p = _synthetic(100)
    m = classification_metrics(y, p, CLASSES, n_boot=50)
    json.dumps(m, allow_nan=False)
    for v in _iter_values(m):
        assert v is None or type(v) in (int, float, str, bool)


def test_binary_block_from_four_class_probs() -> None:
    y, p = _synthetic(200, seed=9)
    m = classification_metrics(y, p, CLASSES, positive="COVID", threshold=0.3, n_boot=100)
    b = m["binary"]
    assert b["positive"] == "COVID" and b["threshold"] == 0.3
    ybin, score = y == 0, p[:, 0]
    pbin = score >= 0.3
    assert b["sensitivity"] == pytest.approx((pbin & ybin).sum() / ybin.sum())
    assert b["specificity"] == pytest.approx((~pbin & ~ybin).sum() / (~ybin).sum())
    assert b["auc"] == pytest.approx(roc_auc_score(ybin, score))
    assert b["auc_ci_low"] <= b["auc"] <= b["auc_ci_high"]
    default = classification_metrics(y, p, CLASSES, n_boot=0)["binary"]
    assert default["threshold"] == 0.5
    assert default["sensitivity_ci_low"] is None  # no resamples, no CI
    assert "binary" not in classification_metrics(y, p, CLASSES, positive="absent", n_boot=0)


def test_invalid_inputs() -> None:
    y, p = _synthetic(20)
    with pytest.raises(ValueError):
        classification_metrics(y, p[:, :3], CLASSES)
    with pytest.raises(ValueError):
        classification_metrics(y + 4, p, CLASSES)


def test_choose_threshold() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    # Youden: threshold 0.7 -> tpr 0.75 fpr 0 (J=.75); 0.4 -> tpr 1, fpr .25 (J=.75); argmax first -> 0.7
    assert choose_threshold(y, s) == pytest.approx(0.7)
    assert choose_threshold(y, s, min_sensitivity=1.0) == pytest.approx(0.4)
    assert choose_threshold(y, s, min_sensitivity=0.5) == pytest.approx(0.8)
    with pytest.raises(ValueError):
        choose_threshold(np.ones(4), np.arange(4.0))


def test_per_source_separates_a_shortcut() -> None:
    # Source "a" is predicted perfectly, source "b" always as class 0: a per-source table must show it.
    y = np.tile(np.arange(4), 30)
    src = np.array(["a"] * 80 + ["b"] * 40)
    pred = np.where(src == "a", y, 0)
    m = per_source_metrics(y, _probs_from_preds(pred, 4), src, CLASSES, n_boot=200, seed=1)
    assert list(m) == ["a", "b"]  # largest source first
    assert m["a"]["n"] == 80 and m["b"]["n"] == 40
    assert m["a"]["accuracy"] == 1.0
    assert m["b"]["accuracy"] == pytest.approx(0.25)
    assert m["b"]["per_class"]["COVID"]["sensitivity"] == 1.0
    assert m["b"]["per_class"]["Normal"]["sensitivity"] == 0.0
    assert m["b"]["per_class"]["Normal"]["support"] == 10
    assert m["a"]["ci"] and m["a"]["accuracy_ci_low"] == 1.0
    assert m["b"]["accuracy_ci_low"] <= 0.25 <= m["b"]["accuracy_ci_high"]
    json.dumps(m, allow_nan=False)
    flat = flat_metrics({"per_source": m}, "test")
    assert flat["test/per_source/b/Normal/sensitivity"] == 0.0


def test_per_source_small_and_unknown_sources() -> None:
    y, p = _synthetic(60, seed=3)
    src = ["x"] * 10 + [""] * 50
    m = per_source_metrics(y, p, src, CLASSES, n_boot=100, min_n_for_ci=30)
    assert list(m) == ["unknown", "x"]
    assert m["x"]["ci"] is False and m["x"]["accuracy_ci_low"] is None  # too few for an interval
    assert m["unknown"]["ci"] is True and m["unknown"]["accuracy_ci_low"] is not None
    assert m["x"]["accuracy"] == pytest.approx(float((p[:10].argmax(1) == y[:10]).mean()))
    assert per_source_metrics(y, p, [""] * 60, CLASSES) == {}  # nothing known: no audit
    with pytest.raises(ValueError, match="sources has 3 items"):
        per_source_metrics(y, p, ["a"] * 3, CLASSES)


@pytest.mark.parametrize("seed", range(5))
def test_validation_macro_f1_is_scikit_learns(seed: int) -> None:
    """The train step's model-selection F1 (numpy, no scikit-learn import) agrees with scikit-learn's, classes
    never predicted or absent from the labels included."""
    from cxr.stats.classification import macro_f1
    from cxr.training.loop import validation_scores

    rng = np.random.default_rng(seed)
    k, n = 5, 37
    labels = rng.integers(0, 3, n)  # classes 3 and 4 never occur
    logits = rng.normal(size=(n, k)).astype(np.float32)
    logits[:, 0] -= 10  # class 0 never predicted
    logits[:, 4] -= 10  # class 4 neither occurs nor is predicted: 0/0, scored 0
    expected = f1_score(labels, logits.argmax(1), labels=list(range(k)), average="macro", zero_division=0)
    assert validation_scores(logits, labels, k)["val_macro_f1"] == pytest.approx(expected, abs=1e-12)
    assert macro_f1(labels, logits.argmax(1), k) == pytest.approx(expected, abs=1e-12)
