"""Two-sample tests for drift: kernel MMD with a permutation p-value, chi-square, and KS on intensities."""

from __future__ import annotations

from collections import Counter
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


def categorical_test(reference: Sequence[str], current: Sequence[str]) -> tuple[float | None, float]:
    """Chi-square test that two samples of categories (classes, sizes, modes) share one distribution."""
    from scipy.stats import chi2_contingency

    cats = sorted(set(reference) | set(current))
    if len(cats) < 2 or not reference or not current:
        return None, 1.0
    ra, ca = Counter(reference), Counter(current)
    table = np.array([[ra[c] for c in cats], [ca[c] for c in cats]], dtype=np.float64)
    res = chi2_contingency(table)
    return float(res.statistic), float(res.pvalue)


def intensity_features(images: np.ndarray) -> np.ndarray:
    """Per-image mean, standard deviation, 5th and 95th percentile of the gray levels (N, 4)."""
    flat = np.asarray(images, np.float32).reshape(len(images), -1)
    p05, p95 = np.percentile(flat, [5, 95], axis=1)
    return np.stack([flat.mean(1), flat.std(1), p05, p95], axis=1)


def intensity_test(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Kolmogorov-Smirnov tests of each intensity feature; (largest KS statistic, Bonferroni-adjusted min p)."""
    from scipy.stats import ks_2samp

    fr, fc = intensity_features(reference), intensity_features(current)
    results = [ks_2samp(fr[:, j], fc[:, j]) for j in range(fr.shape[1])]
    stat = max(float(r.statistic) for r in results)
    p = min(1.0, min(float(r.pvalue) for r in results) * len(results))
    return stat, p
