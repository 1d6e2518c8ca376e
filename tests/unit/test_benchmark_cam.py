"""How the CAM benchmark chooses: localisation among the maps that explain the decision better than noise."""

from __future__ import annotations

from benchsupport import REPO  # noqa: F401  (puts the repository root on sys.path)

from benchmarks.cam import BASELINE, NOISE, Config, choose, faithful, first_round, smoothing_round, stride_round


def _r(pg: float, lungs: float, road: float | None, road_low: float | None, ms: float = 1.0) -> dict:
    return {"pointing_game": pg, "lung_energy": lungs, "road": road, "road_ci_low": road_low, "ms_per_image": ms}


def test_a_map_that_localises_but_does_not_explain_is_not_chosen() -> None:
    pretty = Config("eigencam", 8)
    faithful_one = Config("layercam", 16)
    results = {
        NOISE: _r(0.03, 0.18, 0.10, 0.08),
        BASELINE: _r(0.20, 0.30, 0.20, 0.15),
        pretty: _r(0.90, 0.90, 0.11, 0.05),  # on the lesion, but its ROAD interval reaches the noise map's
        faithful_one: _r(0.40, 0.50, 0.25, 0.20),
    }
    assert faithful(results) == [BASELINE, faithful_one]
    assert choose(results) == faithful_one


def test_without_a_faithful_map_the_previous_default_stays() -> None:
    results = {
        NOISE: _r(0.03, 0.18, 0.10, 0.08),
        BASELINE: _r(0.2, 0.3, 0.1, 0.05),
        Config("hirescam", 8): _r(0.5, 0.5, None, None),
    }
    assert choose(results) == BASELINE


def test_ties_go_to_the_quicker_map() -> None:
    quick, slow = Config("gradcam", 16), Config("gradcam", 16, "aug")
    results = {NOISE: _r(0, 0, 0.0, 0.0), quick: _r(0.5, 0.5, 0.3, 0.2, ms=2.0), slow: _r(0.5, 0.5, 0.3, 0.2, ms=12.0)}
    assert choose(results) == quick


def test_the_rounds_cover_every_method_then_strides_then_smoothing() -> None:
    from cxr.core.sections import CAM_METHODS as METHODS

    assert {c.method for c in first_round()} == set(METHODS) and {c.stride for c in first_round()} == {8}
    assert stride_round([Config("layercam", 8)]) == [Config("layercam", 16), Config("layercam", 32)]
    assert smoothing_round([Config("gradcam", 16), Config("eigencam", 8)]) == [
        Config("gradcam", 16, "aug"),
        Config("gradcam", 16, "eigen"),
        Config("eigencam", 8, "aug"),
    ]
