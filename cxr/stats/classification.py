"""Classification metrics with bootstrap confidence intervals, calibration and thresholds.

All functions are pure and take numpy arrays. Results are JSON-serialisable
(plain ``float``/``int``/``None``/``list``/``dict``; undefined values are ``None``,
never NaN).

Conventions
-----------
* Predictions for the multi-class metrics are ``argmax(probs, axis=1)``.
* Per-class metrics are one-vs-rest. A metric whose denominator is zero is
  undefined (``None``), except precision of a class that has support but is never
  predicted, which is ``0.0`` (as scikit-learn's ``zero_division=0``).
* Macro averages are taken over the classes present in ``y_true`` (support > 0);
  ``weighted_f1`` weights by support.
* Bootstrap: by default stratified (each class resampled with replacement within
  itself, so class counts are preserved); ``stratified=False`` resamples all
  indices. Resamples are represented as per-item count weights so every statistic
  is computed vectorised over resamples. A resample where a metric is undefined
  (e.g. a class is absent for AUC) is skipped for that metric. CIs are
  percentile intervals.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr.stats.bootstrap import check_probs, put_with_ci, resample_weights, safe_div

logger = logging.getLogger(__name__)

_PER_CLASS_METRICS = ("precision", "sensitivity", "specificity", "f1", "auc")
_MACRO_METRICS = ("precision", "sensitivity", "specificity", "f1")
#: The whole-set figures, in the order the result lists them.
_AGGREGATES = ("accuracy", *(f"macro_{m}" for m in _MACRO_METRICS), "weighted_f1", "macro_auc")
_BINARY_METRICS = ("sensitivity", "specificity", "ppv", "npv", "auc")


def _weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mann-Whitney ROC AUC (ties count 1/2) for each row of item weights; (B,) with NaN if undefined."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ws = w[:, order]
    pos = positive[order]
    n = s.shape[0]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], n] - 1
    cum_pos = np.cumsum(ws * pos, axis=1)[:, ends]
    cum_neg = np.cumsum(ws * ~pos, axis=1)[:, ends]
    grp_pos = np.diff(cum_pos, axis=1, prepend=0.0)
    grp_neg = np.diff(cum_neg, axis=1, prepend=0.0)
    below_neg = cum_neg - grp_neg  # negatives with strictly lower score than the group
    num = np.sum(grp_pos * (below_neg + 0.5 * grp_neg), axis=1)
    return safe_div(num, cum_pos[:, -1] * cum_neg[:, -1])


def _cm_stats(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class (..., K) and overall (...) statistics from confusion matrices (..., K, K) [true, pred]."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support = cm.sum(axis=-1)
    predicted = cm.sum(axis=-2)
    total = cm.sum(axis=(-2, -1))
    fp = predicted - tp
    fn = support - tp
    tn = total[..., None] - tp - fp - fn
    precision = safe_div(tp, predicted)
    precision = np.where((predicted == 0) & (support > 0), 0.0, precision)
    return {
        "precision": precision,
        "sensitivity": safe_div(tp, support),
        "specificity": safe_div(tn, tn + fp),
        "f1": safe_div(2 * tp, 2 * tp + fp + fn),
        "support": support,
        "accuracy": safe_div(tp.sum(axis=-1), total),
    }


def macro_f1(y_true: np.ndarray, pred: np.ndarray, k: int) -> float:
    """Macro F1 of predicted labels over all ``k`` classes, a class never true nor predicted scoring 0.

    scikit-learn's ``f1_score(average="macro", labels=range(k), zero_division=0)``, without importing it. Model
    selection's figure; ``classification_metrics``' ``macro_f1`` averages over the classes present instead.
    """
    y = np.asarray(y_true, dtype=np.int64)
    cm = np.bincount(y * k + np.asarray(pred, dtype=np.int64), minlength=k * k).reshape(k, k)
    return float(np.nan_to_num(_cm_stats(cm)["f1"], nan=0.0).mean())


def _macro(per_class: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Mean over valid classes; NaN for a row where any valid class is NaN."""
    if not np.any(valid):
        return np.full(per_class.shape[:-1], np.nan)
    return per_class[..., valid].mean(axis=-1)


def _weighted_f1(f1: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Support-weighted F1 (classes without support contribute nothing)."""
    f1 = np.where(support > 0, f1, 0.0)
    return safe_div(np.sum(f1 * support, axis=-1), support.sum(axis=-1))


@dataclass(frozen=True)
class _Binary:
    """The positive-vs-rest question: which class, at which threshold, and each item's answer."""

    positive: str
    threshold: float
    truth: np.ndarray  # (N,) bool: the item is of the positive class
    score: np.ndarray  # (N,) the positive class's probability
    cells: np.ndarray  # (N, 4) one-hot of the item's cell: tp, fn, tn, fp


def _binary_setup(
    y: np.ndarray, p: np.ndarray, classes: list[str], positive: str | None, threshold: float | None
) -> _Binary | None:
    """The binary block's inputs, or None when there is no positive class among ``classes``."""
    if positive is None:
        return None
    if positive not in classes:
        logger.debug("positive class %r not in classes %s; no binary block", positive, classes)
        return None
    if len(classes) < 2:
        return None
    pos_idx = classes.index(positive)
    thr = 0.5 if threshold is None else float(threshold)
    truth = y == pos_idx
    score = p[:, pos_idx]
    said = score >= thr
    cells = np.stack([truth & said, truth & ~said, ~truth & ~said, ~truth & said], axis=1).astype(np.float64)
    return _Binary(positive, thr, truth, score, cells)


@dataclass(frozen=True)
class _Scorer:
    """The items, held so that one call gives every per-class statistic for any (B, N) matrix of item weights."""

    probs: np.ndarray
    pair: np.ndarray  # (N, K*K) one-hot of true*K + pred: W @ pair is B confusion matrices
    positives: list[np.ndarray]
    binary: _Binary | None

    @classmethod
    def build(cls, y: np.ndarray, p: np.ndarray, binary: _Binary | None) -> _Scorer:
        """The scorer of labels ``y`` and probabilities ``p`` (argmax predictions)."""
        n, k = p.shape
        pair = np.zeros((n, k * k), dtype=np.float64)
        pair[np.arange(n), y * k + p.argmax(axis=1)] = 1.0
        return cls(p, pair, [y == c for c in range(k)], binary)

    def __call__(self, w: np.ndarray) -> dict[str, np.ndarray]:
        """All per-class statistics for a (B, N) weight matrix, each with a leading axis of B."""
        k = self.probs.shape[1]
        st = _cm_stats((w @ self.pair).reshape(-1, k, k))
        st["auc"] = np.stack([_weighted_auc(self.probs[:, c], self.positives[c], w) for c in range(k)], axis=1)
        if self.binary is not None:
            tp, fn, tn, fp = (w @ self.binary.cells).T
            st["bin_sensitivity"] = safe_div(tp, tp + fn)
            st["bin_specificity"] = safe_div(tn, tn + fp)
            st["bin_ppv"] = safe_div(tp, tp + fp)
            st["bin_npv"] = safe_div(tn, tn + fn)
            st["bin_auc"] = _weighted_auc(self.binary.score, self.binary.truth, w)
        return st


def _aggregates(st: dict[str, np.ndarray], valid: np.ndarray, auc_valid: np.ndarray) -> dict[str, np.ndarray]:
    """Whole-set statistics (macro, weighted) from per-class ones; ``valid``: the classes the macros average."""
    d = {"accuracy": st["accuracy"]}
    for m in _MACRO_METRICS:
        d[f"macro_{m}"] = _macro(st[m], valid)
    d["weighted_f1"] = _weighted_f1(st["f1"], st["support"])
    d["macro_auc"] = _macro(st["auc"], auc_valid)
    return d


def _point_estimates(scorer: _Scorer, n: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Every statistic on the items as they are, and the classes the macros average (with support; with an AUC)."""
    point = {key: v[0] for key, v in scorer(np.ones((1, n))).items()}
    valid = point["support"] > 0
    auc_valid = np.isfinite(point["auc"])
    return {**point, **_aggregates(point, valid, auc_valid)}, valid, auc_valid


def _bootstrap_samples(
    scorer: _Scorer,
    y: np.ndarray,
    point: dict[str, np.ndarray],
    valid: np.ndarray,
    auc_valid: np.ndarray,
    n_boot: int,
    seed: int,
    stratified: bool,
) -> dict[str, np.ndarray]:
    """Each statistic of ``point`` on ``n_boot`` resamples, (n_boot, ...) a key; the macros average the same classes."""
    rng = np.random.default_rng(seed)
    boot: dict[str, list[np.ndarray]] = {}
    for w in resample_weights(y, n_boot, rng, stratified):
        st = scorer(w)
        st.update(_aggregates(st, valid, auc_valid))
        for key, v in st.items():
            boot.setdefault(key, []).append(v)
    return {
        key: (np.concatenate(boot[key], axis=0) if key in boot else np.empty((0, *np.shape(v))))
        for key, v in point.items()
    }


def _pack(
    classes: list[str],
    y: np.ndarray,
    pred: np.ndarray,
    point: dict[str, np.ndarray],
    samples: dict[str, np.ndarray],
    binary: _Binary | None,
    ci: float,
) -> dict[str, Any]:
    """The JSON-ready result: whole-set figures, per class, the confusion matrix and the binary block, with CIs."""
    out: dict[str, Any] = {"n": int(y.shape[0]), "classes": classes}
    for key in _AGGREGATES:
        put_with_ci(out, key, point[key], samples[key], ci)
    per_class: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(classes):
        block: dict[str, Any] = {"support": int(point["support"][c])}
        for m in _PER_CLASS_METRICS:
            put_with_ci(block, m, point[m][c], samples[m][:, c], ci)
        per_class[name] = block
    out["per_class"] = per_class
    k = len(classes)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    out["confusion_matrix"] = cm.tolist()
    if binary is not None:
        out["binary"] = {
            "positive": binary.positive,
            "threshold": float(binary.threshold),
            "n_positive": int(binary.truth.sum()),
            "n_negative": int((~binary.truth).sum()),
        }
        for m in _BINARY_METRICS:
            put_with_ci(out["binary"], m, point[f"bin_{m}"], samples[f"bin_{m}"], ci)
    return out


def classification_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    positive: str | None = "COVID",
    threshold: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    stratified: bool = True,
) -> dict:
    """Multi-class metrics (argmax) with bootstrap CIs, per-class one-vs-rest and an optional binary block."""
    classes = [str(c) for c in classes]
    y, p = check_probs(y_true, probs, len(classes))
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    n_boot = int(max(0, n_boot))
    binary = _binary_setup(y, p, classes, positive, threshold)
    scorer = _Scorer.build(y, p, binary)
    point, valid, auc_valid = _point_estimates(scorer, y.shape[0])
    samples = _bootstrap_samples(scorer, y, point, valid, auc_valid, n_boot, seed, stratified)
    out = _pack(classes, y, p.argmax(axis=1), point, samples, binary, ci)
    out["bootstrap"] = {"n_boot": n_boot, "seed": int(seed), "ci": float(ci), "stratified": bool(stratified)}
    return out


def choose_threshold(y_true_binary: np.ndarray, scores: np.ndarray, min_sensitivity: float | None = None) -> float:
    """Youden's J on validation, or the largest threshold reaching min_sensitivity."""
    from sklearn.metrics import roc_curve

    y = np.asarray(y_true_binary).reshape(-1).astype(bool)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"y_true_binary {y.shape} and scores {s.shape} differ in shape")
    if y.all() or (~y).all():
        raise ValueError("choose_threshold needs both positive and negative examples")
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    finite = np.isfinite(thr)
    fpr, tpr, thr = fpr[finite], tpr[finite], thr[finite]  # thresholds are decreasing
    if min_sensitivity is not None:
        if not 0.0 <= min_sensitivity <= 1.0:
            raise ValueError(f"min_sensitivity must be in [0, 1], got {min_sensitivity}")
        ok = np.flatnonzero(tpr >= min_sensitivity - 1e-12)
        chosen = float(thr[ok[0]])
        logger.debug("threshold %.4f reaches sensitivity %.4f (>= %.4f)", chosen, tpr[ok[0]], min_sensitivity)
        return chosen
    j = tpr - fpr
    best = int(np.argmax(j))
    logger.debug("Youden threshold %.4f (J=%.4f)", thr[best], j[best])
    return float(thr[best])


#: Below this many test images a source gets point estimates only: a bootstrap CI on a handful is noise.
MIN_N_FOR_CI = 30


UNKNOWN_SOURCE = "unknown"


_SOURCE_CLASS_KEYS = ("support", "sensitivity", "sensitivity_ci_low", "sensitivity_ci_high")


def per_source_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    sources: Sequence[str],
    classes: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    min_n_for_ci: int = MIN_N_FOR_CI,
) -> dict[str, dict]:
    """Accuracy and per-class sensitivity per image source, with bootstrap CIs where n >= min_n_for_ci.

    Empty sources are grouped as ``unknown``; when no source is known the result is ``{}``
    (nothing to audit). Each block: ``n``, ``accuracy`` (+ CI), ``ci`` (whether intervals were
    computed) and ``per_class`` {class: {support, sensitivity (+ CI)}}.
    """
    classes = [str(c) for c in classes]
    y, p = check_probs(y_true, probs, len(classes))
    src = np.asarray([str(s).strip() if s is not None else "" for s in sources], dtype=object)
    if src.shape[0] != y.shape[0]:
        raise ValueError(f"sources has {src.shape[0]} items but y_true has {y.shape[0]}")
    src[src == ""] = UNKNOWN_SOURCE
    if np.all(src == UNKNOWN_SOURCE):
        return {}
    out: dict[str, dict] = {}
    # Largest sources first: the table reads as "where most of the test set comes from".
    names, counts = np.unique(src.astype(str), return_counts=True)
    for name in [str(n) for _, n in sorted(zip(-counts, names, strict=True))]:
        idx = np.flatnonzero(src == name)
        with_ci = idx.size >= min_n_for_ci
        m = classification_metrics(
            y[idx], p[idx], classes, positive=None, n_boot=n_boot if with_ci else 0, seed=seed, ci=ci
        )
        block: dict[str, Any] = {
            "n": int(idx.size),
            "ci": bool(with_ci and n_boot > 0),
            "accuracy": m["accuracy"],
            "accuracy_ci_low": m["accuracy_ci_low"],
            "accuracy_ci_high": m["accuracy_ci_high"],
            "per_class": {c: {k: m["per_class"][c][k] for k in _SOURCE_CLASS_KEYS} for c in classes},
        }
        out[name] = block
    return out
