"""Array helpers and the stratified bootstrap shared by the metrics: resample weights and percentile CIs."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

# Target number of float64 cells per (resamples x items) chunk (~16 MB each).
CHUNK_CELLS = 2_000_000


def json_float(x: Any) -> float | None:
    """Convert a scalar to a finite Python float, or None when undefined."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise num/den with NaN where den == 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def check_probs(y_true: np.ndarray, probs: np.ndarray, n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
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


def resample_weights(y: np.ndarray, n_boot: int, rng: np.random.Generator, stratified: bool) -> Iterator[np.ndarray]:
    """Yield chunks (b, N) of bootstrap count weights, n_boot rows in total."""
    n = y.shape[0]
    chunk = max(1, min(n_boot, CHUNK_CELLS // max(n, 1)))
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


def percentile_ci(samples: np.ndarray, point: float | None, ci: float) -> tuple[float | None, float | None]:
    """Percentile CI of the finite bootstrap samples; (None, None) if none or point undefined."""
    if point is None:
        return None, None
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return None, None
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(finite, [alpha, 1.0 - alpha])
    return json_float(lo), json_float(hi)


def put_with_ci(out: dict, name: str, point: Any, samples: np.ndarray, ci: float) -> None:
    """Store name, name_ci_low, name_ci_high in out."""
    p = json_float(point)
    lo, hi = percentile_ci(samples, p, ci)
    out[name] = p
    out[f"{name}_ci_low"] = lo
    out[f"{name}_ci_high"] = hi


def bootstrap_mean(
    values: np.ndarray, strata: np.ndarray, n_boot: int, seed: int, stratified: bool = True
) -> tuple[float | None, np.ndarray]:
    """The mean of the finite ``values`` and its ``n_boot`` bootstrap replicates (for :func:`put_with_ci`).

    Items are resampled within each stratum (the true class, as the classification metrics are), so a class's
    share of the items stays what it is; NaN items (a score undefined for that image) are left out first.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    s = np.asarray(strata).reshape(-1)
    if v.shape != s.shape:
        raise ValueError(f"values has {v.size} items but strata has {s.size}")
    keep = np.isfinite(v)
    v, s = v[keep], s[keep]
    if v.size == 0:
        return None, np.empty(0)
    rng = np.random.default_rng(seed)
    samples = [w @ v / w.sum(axis=1) for w in resample_weights(s, max(0, int(n_boot)), rng, stratified)]
    return float(v.mean()), (np.concatenate(samples) if samples else np.empty(0))
