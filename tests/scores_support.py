"""What the metric, figure and tracking tests share: labels and noisy-but-informative class probabilities.

The names are those the tests had when they were one module (tests/unit/test_metrics.py).
"""

from __future__ import annotations

import numpy as np

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]


def _softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _synthetic(n: int, k: int = 4, signal: float = 1.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and noisy-but-informative probabilities."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    z = rng.normal(size=(n, k))
    z[np.arange(n), y] += signal
    return y, _softmax(z)
