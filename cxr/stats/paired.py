"""Paired non-inferiority tests of a challenger against the champion on the same test images."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass
class PairedTest:
    """Paired comparison of per-image correctness: challenger (1) against champion (0)."""

    test: str
    n: int
    b: int  # challenger right, champion wrong
    c: int  # challenger wrong, champion right
    accuracy_challenger: float
    accuracy_champion: float
    difference: float
    margin: float
    alpha: float
    p_value: float | None
    ci_lower: float | None
    non_inferior: bool


def mcnemar_noninferiority(b: int, c: int, n: int, margin: float, alpha: float) -> PairedTest:
    """Exact conditional McNemar test of non-inferiority of the challenger's accuracy with a margin.

    With ``n`` paired images, ``b`` = challenger right & champion wrong, ``c`` = challenger wrong & champion
    right, the accuracy difference is ``d = (b - c) / n``. Hypotheses: H0: d <= -margin, H1: d > -margin.
    Conditional on the ``m = b + c`` discordant pairs, ``b ~ Binomial(m, theta)`` with
    ``theta = p_b / (p_b + p_c)``; at the H0 boundary ``p_b - p_c = -margin``, so with the discordance rate
    ``psi = (b + c) / n`` plugged in, ``theta0 = 1/2 - margin / (2 psi)``. The exact one-sided p-value is
    ``P(B >= b | B ~ Binomial(m, theta0))``; non-inferior when ``p < alpha``. ``margin = 0`` gives the
    classical exact McNemar test (``theta0 = 1/2``). When ``psi <= margin`` (so ``theta0 <= 0``) the two
    models disagree on too few images for the challenger to be ``margin`` worse: p = 0 (non-inferior),
    which includes identical predictions with a positive margin.
    """
    from scipy.stats import binom

    m = b + c
    if n <= 0:
        raise ValueError("no paired images to compare")
    psi = m / n
    if m == 0:
        p = 0.0 if margin > 0 else 1.0
    else:
        theta0 = 0.5 - margin / (2 * psi)
        p = 0.0 if theta0 <= 0 else float(binom.sf(b - 1, m, theta0))
    return PairedTest("mcnemar", n, b, c, math.nan, math.nan, (b - c) / n, margin, alpha, p, None, p < alpha)


def bootstrap_noninferiority(
    right_challenger: Any, right_champion: Any, margin: float, alpha: float, n_boot: int, seed: int = 0
) -> PairedTest:
    """Paired bootstrap of the accuracy difference; non-inferior when the one-sided lower bound exceeds -margin.

    Per image ``x_i = 1[challenger right] - 1[champion right]``, ``d = mean(x)``. ``scipy.stats.bootstrap``
    resamples image indices with replacement ``n_boot`` times (``paired``: the pairs stay together); the
    one-sided ``1 - alpha`` lower confidence bound (percentile method) is the ``alpha`` quantile of the
    resampled ``d*``. Non-inferior when ``lower > -margin``. The same ``seed`` gives the same bound.
    """
    import numpy as np
    from scipy.stats import bootstrap

    a = np.asarray(right_challenger, dtype=np.float64)
    z = np.asarray(right_champion, dtype=np.float64)
    n = len(a)
    if n == 0:
        raise ValueError("no paired images to compare")
    if n < 2:
        raise ValueError(f"a paired bootstrap needs at least 2 paired images, not {n}")
    x = a - z
    result = bootstrap(
        (a, z),
        lambda ch, cp, axis=-1: np.mean(ch - cp, axis=axis),
        n_resamples=n_boot,
        batch=256,  # keeps memory at 256 x n
        vectorized=True,
        paired=True,
        confidence_level=1 - alpha,
        alternative="greater",
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    lower = float(result.confidence_interval.low)
    b, c = int((x > 0).sum()), int((x < 0).sum())
    return PairedTest(
        "bootstrap", n, b, c, math.nan, math.nan, float(x.mean()), margin, alpha, None, lower, lower > -margin
    )
