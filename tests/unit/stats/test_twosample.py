"""The drift check's two-sample tests: the MMD permutation test's calibration and power."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.stats.twosample import mmd_permutation_test


def test_mmd_same_distribution_is_not_flagged_and_a_mean_shift_is() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(80, 8)), rng.normal(size=(80, 8))
    _, p_same, _ = mmd_permutation_test(x, y, 200, seed=1)
    _, p_shift, _ = mmd_permutation_test(x, y + 0.8, 200, seed=1)
    assert p_same > 0.05
    assert p_shift == pytest.approx(1 / 201)


def test_mmd_needs_two_points() -> None:
    with pytest.raises(ValueError, match="two points"):
        mmd_permutation_test(np.zeros((1, 3)), np.zeros((5, 3)))
