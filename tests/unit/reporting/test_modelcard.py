"""The model card as a registry version's description."""

from __future__ import annotations


def test_version_description_is_cut_to_the_registry_limit() -> None:
    from cxr.reporting.modelcard import version_description

    card = "\n".join(f"line {i}" for i in range(2000))
    text = version_description(card, "run123", limit=500)
    assert len(text) <= 500 and "run123" in text and text.startswith("line 0\n")
    assert version_description("short", "r") == "short"
