"""Two-sample tests for drift, each with a permutation p-value: exact under the null that the two samples come
from one distribution (their pooled values are exchangeable), whatever the sample sizes or ties.

Kernel MMD on features (the champion's embedding, or standardised intensity statistics) and a chi-square
statistic on categories (classes, file sizes, modes). A permutation p-value is ``(1 + #{permuted >= observed}) /
(permutations + 1)``: never below ``1 / (permutations + 1)``, and ``P(p <= a) <= a`` for every level ``a``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

INTENSITY_FEATURES: tuple[str, ...] = ("mean", "std", "p05", "p95")


def mmd_permutation_test(
    x: np.ndarray, y: np.ndarray, permutations: int = 500, seed: int = 0
) -> tuple[float, float, float]:
    """Unbiased RBF-kernel MMD^2 between samples ``x`` (m, d) and ``y`` (n, d) and its permutation p-value.

    The bandwidth is the median pairwise distance of the pooled sample. Returns (mmd2, p, bandwidth); the
    smallest reachable p is 1 / (permutations + 1).
    """
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"MMD needs at least two points per sample, got {m} and {n}")
    z = np.concatenate([x, y])
    sq = np.einsum("ij,ij->i", z, z)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
    off = d2[np.triu_indices(len(z), 1)]
    bandwidth = float(np.sqrt(np.median(off[off > 0]))) if np.any(off > 0) else 1.0
    k = np.exp(-d2 / (2.0 * bandwidth**2))

    rng = np.random.default_rng(seed)
    # Row 0 is the observed split; each further row a random relabelling of the pooled sample.
    masks = np.zeros((permutations + 1, m + n), dtype=bool)
    masks[0, :m] = True
    for i in range(1, permutations + 1):
        masks[i, rng.permutation(m + n)[:m]] = True
    a = masks.astype(np.float64)
    b = 1.0 - a
    ka, kb = k @ a.T, k @ b.T  # (N, P+1)
    # The kernel's diagonal is 1: subtracting m (and n) drops the i == j terms of the unbiased estimate.
    xx = (np.einsum("ip,ip->p", a.T, ka) - m) / (m * (m - 1))
    yy = (np.einsum("ip,ip->p", b.T, kb) - n) / (n * (n - 1))
    xy = np.einsum("ip,ip->p", a.T, kb) / (m * n)
    stats = xx + yy - 2.0 * xy
    observed = float(stats[0])
    p = float((1 + np.sum(stats[1:] >= observed)) / (permutations + 1))
    return observed, p, bandwidth


def _chi2(table: np.ndarray) -> np.ndarray:
    """Pearson's chi-square statistic of (..., 2, K) contingency tables (cells with no expected count skipped)."""
    rows = table.sum(-1, keepdims=True)
    cols = table.sum(-2, keepdims=True)
    expected = rows * cols / table.sum((-1, -2), keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        cells = np.where(expected > 0, (table - expected) ** 2 / expected, 0.0)
    return cells.sum((-1, -2))


def categorical_test(
    reference: Sequence[str], current: Sequence[str], permutations: int = 2000, seed: int = 0
) -> tuple[float | None, float]:
    """Whether two samples of categories (classes, sizes, modes) share one distribution: (chi-square, p).

    The p-value is the chi-square statistic's permutation p-value, so a rare category (five images of a new
    size among hundreds) gets an exact p-value, not the chi-square approximation's.
    """
    cats = sorted(set(reference) | set(current))
    if len(cats) < 2 or not reference or not current:
        return None, 1.0
    codes = {c: i for i, c in enumerate(cats)}
    pooled = np.array([codes[c] for c in (*reference, *current)])
    m = len(reference)
    rng = np.random.default_rng(seed)
    order = np.stack([np.arange(len(pooled))] + [rng.permutation(len(pooled)) for _ in range(permutations)])
    shuffled = pooled[order]  # row 0: the observed split
    counts = np.stack([_counts(shuffled[:, :m], len(cats)), _counts(shuffled[:, m:], len(cats))], axis=1)
    stats = _chi2(counts.astype(np.float64))
    return float(stats[0]), float((1 + np.sum(stats[1:] >= stats[0] - 1e-12)) / (permutations + 1))


def _counts(codes: np.ndarray, k: int) -> np.ndarray:
    """Per-row counts of the codes 0..k-1: (P, n) -> (P, k)."""
    return (codes[:, :, None] == np.arange(k)).sum(1)


def intensity_features(images: np.ndarray) -> np.ndarray:
    """Per-image mean, standard deviation, 5th and 95th percentile of the gray levels (N, 4)."""
    flat = np.asarray(images, np.float32).reshape(len(images), -1)
    p05, p95 = np.percentile(flat, [5, 95], axis=1)
    return np.stack([flat.mean(1), flat.std(1), p05, p95], axis=1)


def intensity_test(
    reference: np.ndarray, current: np.ndarray, permutations: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Whether the images' gray-level statistics share one distribution: (MMD^2, permutation p).

    The four statistics of :func:`intensity_features`, standardised on the pooled sample, in one kernel MMD:
    one test of their joint distribution rather than four tests with a correction.
    """
    fr, fc = intensity_features(reference).astype(np.float64), intensity_features(current).astype(np.float64)
    pooled = np.concatenate([fr, fc])
    scale = pooled.std(0)
    scale[scale == 0] = 1.0
    mean = pooled.mean(0)
    mmd2, p, _ = mmd_permutation_test((fr - mean) / scale, (fc - mean) / scale, permutations, seed)
    return mmd2, p
