"""The gate's paired tests: McNemar's exact non-inferiority test and the paired bootstrap."""

from __future__ import annotations

import pytest

from cxr.stats.paired import bootstrap_noninferiority, mcnemar_noninferiority


def test_mcnemar_matches_the_exact_binomial_and_rejects_a_clearly_worse_model() -> None:
    from scipy.stats import binomtest

    # margin 0 is the classical one-sided exact McNemar test.
    t = mcnemar_noninferiority(b=12, c=3, n=100, margin=0.0, alpha=0.05)
    assert t.p_value == pytest.approx(binomtest(12, 15, 0.5, alternative="greater").pvalue)
    assert t.non_inferior
    worse = mcnemar_noninferiority(b=0, c=40, n=200, margin=0.02, alpha=0.05)
    assert not worse.non_inferior and worse.difference == pytest.approx(-0.2)
    same = mcnemar_noninferiority(b=0, c=0, n=200, margin=0.02, alpha=0.05)
    assert same.non_inferior
    # A small loss with much disagreement is not shown non-inferior.
    assert not mcnemar_noninferiority(b=30, c=36, n=200, margin=0.02, alpha=0.05).non_inferior


def test_bootstrap_lower_bound() -> None:
    right = [1] * 180 + [0] * 20
    same = bootstrap_noninferiority(right, right, margin=0.02, alpha=0.05, n_boot=500)
    assert same.non_inferior and same.ci_lower == 0.0
    worse = bootstrap_noninferiority([1] * 140 + [0] * 60, right, margin=0.02, alpha=0.05, n_boot=500)
    assert not worse.non_inferior and worse.ci_lower < -0.1


def test_bootstrap_is_seeded_and_needs_two_pairs() -> None:
    challenger, champion = [1, 0] * 50, [1] * 70 + [0] * 30
    first = bootstrap_noninferiority(challenger, champion, margin=0.02, alpha=0.05, n_boot=300, seed=7)
    assert first == bootstrap_noninferiority(challenger, champion, margin=0.02, alpha=0.05, n_boot=300, seed=7)
    assert first.ci_lower < first.difference == pytest.approx(-0.2)
    with pytest.raises(ValueError, match="at least 2 paired images"):
        bootstrap_noninferiority([1], [0], margin=0.02, alpha=0.05, n_boot=100)
