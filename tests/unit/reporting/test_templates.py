"""The report and model card templates: HTML escaped, Markdown verbatim, missing values loud, shipped with the
package."""

from __future__ import annotations

import fnmatch
import importlib.resources
import tomllib

import jinja2
import pytest
from conftest import REPO, tiny_params

from cxr.core.config import parse_settings
from cxr.reporting.modelcard import model_card
from cxr.reporting.templating import environment, render_html, render_text

HOSTILE = "<script>alert(1)</script>"


def test_html_templates_escape_values() -> None:
    page = render_html(
        "report.html.j2",
        title=HOSTILE,
        labels=["COVID", HOSTILE],
        arch="resnet18",
        image_size=48,
        fingerprint="f",
        synthetic=False,
        sections=[
            {
                "id": "x",
                "title": HOSTILE,
                "html": render_html(
                    "report_lineage.html.j2",
                    commit=HOSTILE,
                    dirty=False,
                    data_version=None,
                    lock_hash=None,
                    fingerprint="f",
                    registered={"run_id": HOSTILE, "name": "m", "version": "1"},
                ),
            }
        ],
    )
    assert "<script" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 7  # title twice, labels, nav, heading, lineage twice
    # Markup the templates write (sections' HTML, tags) is kept.
    assert '<section id="x"><h2>' in page and "<td><code>&lt;script&gt;" in page


def test_model_card_is_markdown_not_html_escaped() -> None:
    settings = parse_settings(tiny_params(base={"model_name": f"m{HOSTILE}"}))
    card = model_card(
        settings,
        {"classes": ["COVID", "Normal"]},
        {"n": 4, "accuracy": 0.5},
        {},
        {"data_version": "abc"},
        {"images": 4, "skipped": [{"path": "a<b>.png", "reason": "x & y"}]},
    )
    # Markdown is read as text: an HTML entity would show as such ("&lt;=" for "<=").
    assert card.startswith(f"# Model card: m{HOSTILE}\n")
    assert "(<= " in card and "`a<b>.png` (x & y)" in card and "&lt;" not in card and "&amp;" not in card


def test_autoescape_follows_the_template_kind() -> None:
    env = environment()
    assert env.get_template("report.html.j2").render  # found through the package loader
    assert env.autoescape("report_metrics.html.j2") is True
    assert env.autoescape("model_card.md.j2") is False
    with pytest.raises(ValueError, match="not an HTML template"):
        render_html("model_card.md.j2")


def test_a_missing_value_fails_loudly() -> None:
    with pytest.raises(jinja2.UndefinedError, match="title"):
        render_html("report.html.j2", labels=[], arch="a", image_size=1, fingerprint="f", synthetic=False, sections=[])
    with pytest.raises(jinja2.UndefinedError):
        render_text("model_card.md.j2")


def test_templates_ship_with_the_package() -> None:
    """What a wheel holds: every template is under the package and matched by the package-data globs."""
    shipped = importlib.resources.files("cxr.reporting") / "templates"
    names = {p.name for p in shipped.iterdir() if p.is_file()}
    assert {"report.html.j2", "macros.html.j2", "report_drift.html.j2", "model_card.md.j2"} <= names
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["cxr.reporting"]
    on_disk = [
        p.relative_to(REPO / "cxr" / "reporting").as_posix()
        for p in (REPO / "cxr" / "reporting" / "templates").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    unshipped = [
        f for f in on_disk if not any(fnmatch.fnmatchcase(f, g) and f.count("/") == g.count("/") for g in globs)
    ]
    assert on_disk and not unshipped, f"templates a wheel would leave out: {unshipped}"


@pytest.mark.parametrize("source", ["synthetic", "local"])
def test_the_model_card_warns_first_when_the_model_saw_only_synthetic_images(source: str) -> None:
    params = tiny_params(download={"source": source, "local": {"path": "/data/cxr"}})
    card = model_card(parse_settings(params), {"classes": ["COVID", "Normal"]}, {"n": 4}, {}, {})
    warned = "**Warning: trained on synthetic images, not radiographs.**" in card
    assert warned == (source == "synthetic")
    if warned:  # before any other section: the first thing a reader of the registry sees
        assert card.index("Warning: trained on synthetic") < card.index("## Intended use")
