"""The model card as a registry version's description."""

from __future__ import annotations


def test_version_description_is_cut_to_the_registry_limit() -> None:
    from cxr.reporting.modelcard import version_description

    card = "\n".join(f"line {i}" for i in range(2000))
    text = version_description(card, "run123", limit=500)
    assert len(text) <= 500 and "run123" in text and text.startswith("line 0\n")
    assert version_description("short", "r") == "short"


def test_the_card_gives_calibration_and_explanation_figures_with_their_intervals() -> None:
    from conftest import tiny_params

    from cxr.core.config import parse_settings
    from cxr.reporting.modelcard import model_card

    metrics = {
        "calibration": {
            "method": "vector",
            "criterion": "the lowest cross-validated NLL",
            "valid_cv_nll": {"none": 0.5, "vector": 0.45},
            "ece": 0.021,
            "ece_ci_low": 0.012,
            "ece_ci_high": 0.044,
            "ece_uncalibrated": 0.06,
            "methods": {"none": {"ece": 0.06, "ece_ci_low": 0.04, "ece_ci_high": 0.08}, "vector": {"ece": 0.021}},
        }
    }
    cam = {"lung_energy": 0.61, "lung_energy_ci_low": 0.58, "lung_energy_ci_high": 0.64, "pointing_game": 0.7}
    card = model_card(parse_settings(tiny_params()), {"classes": ["a", "b"]}, metrics, cam, {})
    assert "Applied: **vector**, chosen as the lowest cross-validated NLL." in card
    assert "Test ECE as served 0.0210 [0.0120, 0.0440] (uncalibrated 0.0600)" in card
    assert "- none: validation NLL (5-fold cross-validated) 0.5000, test ECE 0.0600 [0.0400, 0.0800]" in card
    assert "- vector: validation NLL (5-fold cross-validated) 0.4500, test ECE 0.0210 (applied)" in card
    assert "inside the lungs: 0.6100 [0.5800, 0.6400]" in card and "known lesions: 0.7000 (chance" in card
