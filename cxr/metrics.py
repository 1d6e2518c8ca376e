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
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

_PER_CLASS_METRICS = ("precision", "sensitivity", "specificity", "f1", "auc")
_MACRO_METRICS = ("precision", "sensitivity", "specificity", "f1")
# Target number of float64 cells per (resamples x items) chunk (~16 MB each).
_CHUNK_CELLS = 2_000_000


# --------------------------------------------------------------------------- helpers


def _to_json_float(x: Any) -> float | None:
    """Convert a scalar to a finite Python float, or None when undefined."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise num/den with NaN where den == 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _validate(y_true: np.ndarray, probs: np.ndarray, n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes/label range and return (int64 labels, float64 probs)."""
    y = np.asarray(y_true).reshape(-1)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be 2-D (N, K), got shape {p.shape}")
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"y_true has {y.shape[0]} items but probs has {p.shape[0]} rows")
    if y.size == 0:
        raise ValueError("empty inputs")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError("y_true must contain integer class indices")
    y = y.astype(np.int64)
    k = p.shape[1] if n_classes is None else n_classes
    if p.shape[1] != k:
        raise ValueError(f"probs has {p.shape[1]} columns but {k} classes were given")
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"y_true values must be in [0, {k - 1}], got [{y.min()}, {y.max()}]")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contains non-finite values")
    return y, p


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
    return _safe_div(num, cum_pos[:, -1] * cum_neg[:, -1])


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
    precision = _safe_div(tp, predicted)
    precision = np.where((predicted == 0) & (support > 0), 0.0, precision)
    return {
        "precision": precision,
        "sensitivity": _safe_div(tp, support),
        "specificity": _safe_div(tn, tn + fp),
        "f1": _safe_div(2 * tp, 2 * tp + fp + fn),
        "support": support,
        "accuracy": _safe_div(tp.sum(axis=-1), total),
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
    return _safe_div(np.sum(f1 * support, axis=-1), support.sum(axis=-1))


def _resample_weights(
    y: np.ndarray, n_boot: int, rng: np.random.Generator, stratified: bool
) -> Iterator[np.ndarray]:
    """Yield chunks (b, N) of bootstrap count weights, n_boot rows in total."""
    n = y.shape[0]
    chunk = max(1, min(n_boot, _CHUNK_CELLS // max(n, 1)))
    groups = [np.flatnonzero(y == c) for c in np.unique(y)] if stratified else [np.arange(n)]
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        rows = np.arange(b, dtype=np.int64)[:, None] * n
        counts = np.zeros(b * n, dtype=np.float64)
        for idx in groups:
            draws = idx[rng.integers(0, idx.size, size=(b, idx.size))]
            counts += np.bincount((rows + draws).ravel(), minlength=b * n)
        yield counts.reshape(b, n)
        done += b


def _ci(samples: np.ndarray, point: float | None, ci: float) -> tuple[float | None, float | None]:
    """Percentile CI of the finite bootstrap samples; (None, None) if none or point undefined."""
    if point is None:
        return None, None
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return None, None
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(finite, [alpha, 1.0 - alpha])
    return _to_json_float(lo), _to_json_float(hi)


def _put(out: dict, name: str, point: Any, samples: np.ndarray, ci: float) -> None:
    """Store name, name_ci_low, name_ci_high in out."""
    p = _to_json_float(point)
    lo, hi = _ci(samples, p, ci)
    out[name] = p
    out[f"{name}_ci_low"] = lo
    out[f"{name}_ci_high"] = hi


# --------------------------------------------------------------------------- public API


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
    k = len(classes)
    y, p = _validate(y_true, probs, k)
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    n_boot = int(max(0, n_boot))
    n = y.shape[0]
    pred = p.argmax(axis=1)

    # Confusion matrix for any item weights: W (B, N) @ onehot(true*K + pred) (N, K*K).
    pair = np.zeros((n, k * k), dtype=np.float64)
    pair[np.arange(n), y * k + pred] = 1.0
    positives = [y == c for c in range(k)]

    do_binary = positive is not None and positive in classes and k >= 2
    if do_binary:
        pos_idx = classes.index(positive)
        thr = 0.5 if threshold is None else float(threshold)
        ybin = y == pos_idx
        score = p[:, pos_idx]
        pbin = score >= thr
        bin_cells = np.stack([ybin & pbin, ybin & ~pbin, ~ybin & ~pbin, ~ybin & pbin], axis=1).astype(np.float64)
    elif positive is not None and positive not in classes:
        logger.debug("positive class %r not in classes %s; no binary block", positive, classes)

    def stats(w: np.ndarray) -> dict[str, np.ndarray]:
        """All statistics for a (B, N) weight matrix."""
        cm = (w @ pair).reshape(-1, k, k)
        st = _cm_stats(cm)
        st["auc"] = np.stack([_weighted_auc(p[:, c], positives[c], w) for c in range(k)], axis=1)
        if do_binary:
            tp, fn, tn, fp = (w @ bin_cells).T
            st["bin_sensitivity"] = _safe_div(tp, tp + fn)
            st["bin_specificity"] = _safe_div(tn, tn + fp)
            st["bin_ppv"] = _safe_div(tp, tp + fp)
            st["bin_npv"] = _safe_div(tn, tn + fn)
            st["bin_auc"] = _weighted_auc(score, ybin, w)
        return st

    point = {key: v[0] for key, v in stats(np.ones((1, n))).items()}
    support = point["support"]
    valid = support > 0
    auc_valid = np.isfinite(point["auc"])

    def derived(st: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Aggregate statistics (macro, weighted) from per-class statistics."""
        d = {"accuracy": st["accuracy"]}
        for m in _MACRO_METRICS:
            d[f"macro_{m}"] = _macro(st[m], valid)
        d["weighted_f1"] = _weighted_f1(st["f1"], st["support"])
        d["macro_auc"] = _macro(st["auc"], auc_valid)
        return d

    point_agg = derived(point)

    # Bootstrap.
    rng = np.random.default_rng(seed)
    boot: dict[str, list[np.ndarray]] = {}
    for w in _resample_weights(y, n_boot, rng, stratified):
        st = stats(w)
        st.update(derived(st))
        for key, v in st.items():
            boot.setdefault(key, []).append(v)
    empty_shapes = {key: np.asarray(v).shape for key, v in {**point, **point_agg}.items()}
    samples = {
        key: (np.concatenate(boot[key], axis=0) if key in boot else np.empty((0, *empty_shapes[key])))
        for key in empty_shapes
    }

    out: dict[str, Any] = {"n": int(n), "classes": classes}
    for key in ("accuracy", *(f"macro_{m}" for m in _MACRO_METRICS), "weighted_f1", "macro_auc"):
        _put(out, key, point_agg[key], samples[key], ci)

    per_class: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(classes):
        block: dict[str, Any] = {"support": int(support[c])}
        for m in _PER_CLASS_METRICS:
            _put(block, m, point[m][c], samples[m][:, c], ci)
        per_class[name] = block
    out["per_class"] = per_class

    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    out["confusion_matrix"] = cm.tolist()

    if do_binary:
        binary: dict[str, Any] = {
            "positive": positive,
            "threshold": float(thr),
            "n_positive": int(ybin.sum()),
            "n_negative": int((~ybin).sum()),
        }
        for m in ("sensitivity", "specificity", "ppv", "npv", "auc"):
            _put(binary, m, point[f"bin_{m}"], samples[f"bin_{m}"], ci)
        out["binary"] = binary

    out["bootstrap"] = {"n_boot": n_boot, "seed": int(seed), "ci": float(ci), "stratified": bool(stratified)}
    return out


def choose_threshold(
    y_true_binary: np.ndarray, scores: np.ndarray, min_sensitivity: float | None = None
) -> float:
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


def calibration(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> dict:
    """ECE, Brier (multi-class), and reliability curve arrays (bin confidence, accuracy, count)."""
    y, p = _validate(y_true, probs)
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    n, k = p.shape
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bins are (lo, hi], the first one [0, hi].
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    mean_conf = _safe_div(np.bincount(idx, weights=conf, minlength=n_bins), count)
    mean_acc = _safe_div(np.bincount(idx, weights=correct, minlength=n_bins), count)
    gaps = np.abs(mean_acc - mean_conf)
    filled = count > 0
    ece = float(np.sum(count[filled] / n * gaps[filled]))
    mce = float(np.max(gaps[filled]))
    onehot = np.zeros_like(p)
    onehot[np.arange(n), y] = 1.0
    brier = float(np.mean(np.sum((p - onehot) ** 2, axis=1)))
    nll = float(-np.mean(np.log(np.clip(p[np.arange(n), y], 1e-12, 1.0))))
    return {
        "ece": ece,
        "mce": mce,
        "brier": brier,
        "nll": nll,
        "n_bins": int(n_bins),
        "bin_edges": edges.tolist(),
        "bin_confidence": [_to_json_float(v) for v in mean_conf],
        "bin_accuracy": [_to_json_float(v) for v in mean_acc],
        "bin_count": [int(v) for v in count],
    }


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """Temperature scaling minimising NLL on validation (bounded search over log T in [log 0.05, log 20])."""
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    z = np.asarray(logits, dtype=np.float64)
    y, _ = _validate(y_true, z)
    rows = np.arange(z.shape[0])

    def nll(log_t: float) -> float:
        """Mean negative log-likelihood at temperature exp(log_t)."""
        zt = z / math.exp(log_t)
        return float(np.mean(logsumexp(zt, axis=1) - zt[rows, y]))

    res = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded", options={"xatol": 1e-5})
    t = float(math.exp(res.x))
    logger.debug("fitted temperature %.4f (NLL %.4f -> %.4f)", t, nll(0.0), res.fun)
    return t


def nll(logits: np.ndarray, y_true: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``y_true`` under ``softmax(logits / temperature)``."""
    from scipy.special import logsumexp

    z = np.asarray(logits, dtype=np.float64) / temperature
    y = np.asarray(y_true, dtype=int)
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(y)), y]))


#: How evaluation decides whether the temperature fitted on validation is used (named in the report).
TEMPERATURE_CRITERION = "5-fold cross-validated NLL on the validation split improves over no scaling"


def temperature_check(logits: np.ndarray, y_true: np.ndarray, folds: int = 5, seed: int = 0) -> dict:
    """Whether temperature scaling helps on data it was not fitted on, judged on validation alone.

    Each fold's images are scored at the temperature fitted on the other folds and at 1; scaling is
    used only when the held-out NLL improves (a temperature fitted on few images can overfit them).
    """
    z = np.asarray(logits, dtype=np.float64)
    y, _ = _validate(y_true, z)
    order = np.random.default_rng(seed).permutation(len(y))
    parts = [p for p in np.array_split(order, min(folds, len(y))) if len(p)]
    scaled = plain = 0.0
    for held in parts:
        rest = np.setdiff1d(order, held)
        t = fit_temperature(z[rest], y[rest]) if len(rest) else 1.0
        scaled += nll(z[held], y[held], t) * len(held)
        plain += nll(z[held], y[held]) * len(held)
    scaled, plain = scaled / len(y), plain / len(y)
    return {"criterion": TEMPERATURE_CRITERION, "folds": len(parts), "valid_cv_nll_scaled": scaled,
            "valid_cv_nll_unscaled": plain, "helps": bool(scaled < plain)}


def _sanitize_key(key: str) -> str:
    """Keep characters MLflow accepts in metric names; replace the rest with '_'."""
    return "".join(ch if (ch.isalnum() or ch in "_-. /") else "_" for ch in str(key))


def flat_metrics(m: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten to 'test/accuracy', 'test/COVID/sensitivity' style keys with float values only (None dropped) for MLflow."""
    out: dict[str, float] = {}

    def walk(obj: Mapping[str, Any], path: list[str]) -> None:
        """Recurse into nested dicts, skipping the 'per_class' level."""
        for key, value in obj.items():
            sub = path if key == "per_class" else [*path, _sanitize_key(key)]
            if isinstance(value, Mapping):
                walk(value, sub)
            elif isinstance(value, bool) or value is None:
                continue
            elif isinstance(value, (int, float, np.integer, np.floating)):
                v = float(value)
                if math.isfinite(v):
                    out["/".join(sub)] = v

    base = [s for s in prefix.strip("/").split("/") if s] if prefix else []
    walk(m, base)
    return out


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
    y, p = _validate(y_true, probs, len(classes))
    src = np.asarray([str(s).strip() if s is not None else "" for s in sources], dtype=object)
    if src.shape[0] != y.shape[0]:
        raise ValueError(f"sources has {src.shape[0]} items but y_true has {y.shape[0]}")
    src[src == ""] = UNKNOWN_SOURCE
    if np.all(src == UNKNOWN_SOURCE):
        return {}
    out: dict[str, dict] = {}
    # Largest sources first: the table reads as "where most of the test set comes from".
    names, counts = np.unique(src.astype(str), return_counts=True)
    for name in [str(n) for _, n in sorted(zip(-counts, names))]:
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


def headline_metrics(m: Mapping[str, Any]) -> dict[str, Any]:
    """The figures a reader compares across runs (``dvc metrics show``, a screen wide); the rest stays in the full file.

    Sensitivity per class is a table of its own (:func:`sensitivity_by_class`), one column per class.
    """
    out: dict[str, Any] = {k: m[k] for k in ("accuracy", "macro_auc", "macro_f1") if m.get(k) is not None}
    binary = m.get("binary") or {}
    if binary.get("sensitivity") is not None:
        out[f"{binary.get('positive', 'positive')}_vs_rest"] = {
            "sens": binary["sensitivity"], "spec": binary.get("specificity")
        }
    ece = (m.get("calibration") or {}).get("ece")
    if ece is not None:
        out["ece"] = ece
    return out


def sensitivity_by_class(m: Mapping[str, Any]) -> dict[str, float]:
    """Test sensitivity (recall) of each class, by class name."""
    return {c: block["sensitivity"] for c, block in (m.get("per_class") or {}).items() if "sensitivity" in block}


#: Grad-CAM figures worth comparing across runs; the per-class breakdowns stay in the full file.
CAM_HEADLINE: tuple[str, ...] = ("lung_energy", "lung_area_fraction", "pointing_game", "pointing_game_chance")


def cam_headline(m: Mapping[str, Any]) -> dict[str, Any]:
    """The Grad-CAM headline: lung energy against the lungs' area, the pointing game against chance."""
    return {k: m[k] for k in CAM_HEADLINE if m.get(k) is not None}
