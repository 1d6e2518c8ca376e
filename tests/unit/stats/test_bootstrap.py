"""The bootstrap shared by the metrics: a mean with its interval, resampled within each class."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.stats.bootstrap import bootstrap_mean, percentile_ci, resample_weights


def test_the_mean_leaves_out_undefined_items_and_its_interval_holds_it() -> None:
    rng = np.random.default_rng(0)
    values = rng.random(300)
    values[::7] = np.nan  # e.g. an image whose map is empty
    labels = rng.integers(0, 3, 300)
    point, samples = bootstrap_mean(values, labels, 500, seed=1)
    assert point == pytest.approx(np.nanmean(values))
    assert samples.shape == (500,) and np.isfinite(samples).all()
    lo, hi = percentile_ci(samples, point, 0.95)
    assert lo < point < hi
    # About the standard error's width: 2 x 1.96 x sd / sqrt(n).
    se = np.nanstd(values) / np.sqrt(np.isfinite(values).sum())
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.25)


def test_resampling_within_classes_keeps_each_class_share() -> None:
    """A score fixed by the class (all of class 1 hit, none of class 0) does not vary when each class is resampled
    within itself; resampling all images together makes the share of each class, and so the mean, vary."""
    labels = np.repeat([0, 1], [30, 70])
    values = labels.astype(float)
    point, within = bootstrap_mean(values, labels, 200, seed=0)
    assert point == 0.7 and np.ptp(within) == 0
    _, pooled = bootstrap_mean(values, labels, 200, seed=0, stratified=False)
    assert np.ptp(pooled) > 0.1


def test_replicates_are_means_of_resamples() -> None:
    """Each replicate is the mean of a resample drawn as ``resample_weights`` draws it with the same seed."""
    rng = np.random.default_rng(3)
    values, labels = rng.random(40), rng.integers(0, 2, 40)
    _, samples = bootstrap_mean(values, labels, 5, seed=9)
    weights = next(resample_weights(labels, 5, np.random.default_rng(9), True))
    expected = [np.repeat(values, w.astype(int)).mean() for w in weights]
    np.testing.assert_allclose(samples, expected)


def test_no_finite_value_or_no_resample() -> None:
    assert bootstrap_mean(np.full(4, np.nan), np.zeros(4), 100, 0) == (None, pytest.approx(np.empty(0)))
    point, samples = bootstrap_mean(np.ones(4), np.zeros(4), 0, 0)
    assert point == 1.0 and samples.size == 0 and percentile_ci(samples, point, 0.95) == (None, None)
    with pytest.raises(ValueError, match="strata"):
        bootstrap_mean(np.ones(4), np.zeros(3), 10, 0)
