"""How the levers benchmark judges a lever: localisation up beyond its interval, accuracy held on both data sets."""

from __future__ import annotations

from benchsupport import REPO  # noqa: F401  (puts the repository root on sys.path)

from benchmarks.levers import BASELINE, LEVERS, real_levers, real_twin, verdict


def _r(pg: tuple, lungs: tuple, acc: tuple) -> dict:
    out = {}
    for key, (v, lo, hi) in (("pointing_game", pg), ("lung_energy", lungs), ("accuracy", acc)):
        out.update({key: v, f"{key}_ci_low": lo, f"{key}_ci_high": hi})
    return out


BASE = _r((0.36, 0.33, 0.39), (0.54, 0.53, 0.56), (0.84, 0.81, 0.87))


def test_a_lever_is_kept_when_one_figure_rises_beyond_its_interval_and_nothing_falls() -> None:
    lever = "lung attention 1 + output stride 16"
    synthetic = {BASELINE: BASE, lever: _r((0.34, 0.32, 0.37), (0.78, 0.77, 0.79), (0.89, 0.86, 0.92))}
    real = {
        BASELINE: {"accuracy": 0.93, "accuracy_ci_high": 0.96},
        lever: {"accuracy": 0.927, "accuracy_ci_high": 0.95},
    }
    kept, why = verdict(lever, synthetic, real)
    assert kept and why == "kept: lung energy rises beyond the intervals, pointing game within them"


def test_a_lever_that_moves_nothing_beyond_the_intervals_is_not_kept() -> None:
    lever = "lung attention 1"
    synthetic = {BASELINE: BASE, lever: _r((0.38, 0.35, 0.41), (0.55, 0.54, 0.57), (0.86, 0.83, 0.89))}
    kept, why = verdict(lever, synthetic, {})
    assert not kept and why == "neither pointing game nor lung energy rises beyond the intervals"


def test_a_fall_beyond_the_interval_anywhere_drops_the_lever() -> None:
    lever = "output stride 16"
    # Lung energy up, but the pointing game falls beyond its interval.
    synthetic = {BASELINE: BASE, lever: _r((0.04, 0.02, 0.06), (0.70, 0.69, 0.71), (0.84, 0.81, 0.87))}
    assert verdict(lever, synthetic, {}) == (False, "pointing game falls beyond the intervals")
    # Localisation up, synthetic accuracy held, but real accuracy's upper bound below the baseline's point.
    synthetic[lever] = _r((0.50, 0.45, 0.55), (0.70, 0.69, 0.71), (0.84, 0.81, 0.87))
    real = {BASELINE: {"accuracy": 0.93, "accuracy_ci_high": 0.96}, lever: {"accuracy": 0.85, "accuracy_ci_high": 0.9}}
    assert verdict(lever, synthetic, real) == (False, "cxr-dev accuracy falls beyond its interval")


def test_on_cxr_dev_a_mask_lever_is_the_run_without_it() -> None:
    """No lung masks there: the lung-attention loss is zero on every image, so its run is not repeated."""
    assert real_twin("lung attention 1") == BASELINE
    assert real_twin("lung attention 1 + output stride 16") == "output stride 16"
    assert real_levers() == [BASELINE, "output stride 16"]
    assert all(set(o) == set(LEVERS[BASELINE]) for o in LEVERS.values())  # each row sets every lever's key
