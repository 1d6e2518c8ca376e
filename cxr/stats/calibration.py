"""Calibration: reliability bins, ECE (with its interval) and Brier score; fitting temperature, vector and
isotonic scaling (applied by ``cxr.model.calibrate``, chosen by ``cxr.evaluation.calibrate``)."""

from __future__ import annotations

import logging
import math

import numpy as np

from cxr.stats.bootstrap import check_probs, json_float, put_with_ci, resample_weights, safe_div

logger = logging.getLogger(__name__)


def _top1_bins(y: np.ndarray, p: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top-1 confidence, whether it is right (0/1), the bin edges and each item's bin."""
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bins are (lo, hi], the first one [0, hi].
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    return conf, correct, edges, idx


def calibration(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> dict:
    """ECE, Brier (multi-class), and reliability curve arrays (bin confidence, accuracy, count)."""
    y, p = check_probs(y_true, probs)
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    n, k = p.shape
    conf, correct, edges, idx = _top1_bins(y, p, n_bins)
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


def ece_with_ci(
    y_true: np.ndarray,
    probs: np.ndarray,
    n_bins: int = 15,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    stratified: bool = True,
) -> dict:
    """``ece`` (as :func:`calibration` computes it) with its bootstrap interval, ``ece_ci_low``/``ece_ci_high``.

    Images are resampled within each true class, as the classification metrics are. Each replicate bins its
    resample afresh: ECE is the sum over bins of |correct - confidence| summed in the bin, over the images.
    """
    y, p = check_probs(y_true, probs)
    conf, correct, _, idx = _top1_bins(y, p, n_bins)
    onehot = np.zeros((len(y), n_bins))
    onehot[np.arange(len(y)), idx] = 1.0
    gap = onehot * (correct - conf)[:, None]  # (N, bins): summed per bin over a resample, then |.|

    def ece(w: np.ndarray) -> np.ndarray:
        return np.abs(w @ gap).sum(axis=1) / w.sum(axis=1)

    rng = np.random.default_rng(seed)
    samples = [ece(w) for w in resample_weights(y, max(0, int(n_boot)), rng, stratified)]
    out: dict = {}
    put_with_ci(out, "ece", ece(np.ones((1, len(y))))[0], np.concatenate(samples) if samples else np.empty(0), ci)
    return out


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


def fit_vector_scaling(logits: np.ndarray, y_true: np.ndarray, ridge: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Vector scaling minimising NLL: a scale and a bias per class, softmax(z * scale + bias); (scale, bias).

    A small ridge on the biases (which softmax sees only up to a constant) and on the scales' distance from the
    fitted temperature's keeps the 2K parameters defined on a few hundred images.
    """
    from scipy.optimize import minimize
    from scipy.special import log_softmax, softmax

    z = np.asarray(logits, dtype=np.float64)
    y, _ = check_probs(y_true, z)
    n, k = z.shape
    onehot = np.eye(k)[y]
    prior = np.full(k, 1.0 / fit_temperature(z, y))

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        scale, bias = theta[:k], theta[k:]
        s = z * scale + bias
        loss = -np.mean(np.sum(onehot * log_softmax(s, axis=1), axis=1))
        loss += ridge * (np.sum((scale - prior) ** 2) + np.sum(bias**2))
        d = (softmax(s, axis=1) - onehot) / n  # dNLL/ds
        grad = np.concatenate([(d * z).sum(0) + 2 * ridge * (scale - prior), d.sum(0) + 2 * ridge * bias])
        return float(loss), grad

    res = minimize(objective, np.concatenate([prior, np.zeros(k)]), jac=True, method="L-BFGS-B")
    logger.debug("vector scaling: NLL %.4f after %d iterations", res.fun, res.nit)
    return res.x[:k].copy(), res.x[k:].copy()


def fit_isotonic(probs: np.ndarray, y_true: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per class, the one-vs-rest isotonic regression of "is this class" on its probability: its points (x, y).

    Between the points the map is linear, outside them flat (scikit-learn's ``out_of_bounds="clip"``), so
    ``np.interp(p, x, y)`` applies it (``cxr.model.calibrate``) without scikit-learn.
    """
    from sklearn.isotonic import IsotonicRegression

    y, p = check_probs(y_true, probs)
    out = []
    for c in range(p.shape[1]):
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        iso.fit(p[:, c], (y == c).astype(np.float64))
        out.append((np.asarray(iso.X_thresholds_, dtype=np.float64), np.asarray(iso.y_thresholds_, dtype=np.float64)))
    return out
