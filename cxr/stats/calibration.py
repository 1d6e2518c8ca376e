"""Calibration: reliability bins, ECE and Brier score; temperature scaling and the rule that applies it."""

from __future__ import annotations

import logging
import math

import numpy as np

from cxr.stats.bootstrap import check_probs, json_float, safe_div

logger = logging.getLogger(__name__)


def calibration(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> dict:
    """ECE, Brier (multi-class), and reliability curve arrays (bin confidence, accuracy, count)."""
    y, p = check_probs(y_true, probs)
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    n, k = p.shape
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bins are (lo, hi], the first one [0, hi].
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    mean_conf = safe_div(np.bincount(idx, weights=conf, minlength=n_bins), count)
    mean_acc = safe_div(np.bincount(idx, weights=correct, minlength=n_bins), count)
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
        "bin_confidence": [json_float(v) for v in mean_conf],
        "bin_accuracy": [json_float(v) for v in mean_acc],
        "bin_count": [int(v) for v in count],
    }


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """Temperature scaling minimising NLL on validation (bounded search over log T in [log 0.05, log 20])."""
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    z = np.asarray(logits, dtype=np.float64)
    y, _ = check_probs(y_true, z)
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
    y, _ = check_probs(y_true, z)
    order = np.random.default_rng(seed).permutation(len(y))
    parts = [p for p in np.array_split(order, min(folds, len(y))) if len(p)]
    scaled = plain = 0.0
    for held in parts:
        rest = np.setdiff1d(order, held)
        t = fit_temperature(z[rest], y[rest]) if len(rest) else 1.0
        scaled += nll(z[held], y[held], t) * len(held)
        plain += nll(z[held], y[held]) * len(held)
    scaled, plain = scaled / len(y), plain / len(y)
    return {
        "criterion": TEMPERATURE_CRITERION,
        "folds": len(parts),
        "valid_cv_nll_scaled": scaled,
        "valid_cv_nll_unscaled": plain,
        "helps": bool(scaled < plain),
    }
