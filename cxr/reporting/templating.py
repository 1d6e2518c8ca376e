"""The Jinja2 environment that renders the HTML report and the model card from ``cxr/reporting/templates``.

HTML templates (``*.html.j2``) are autoescaped: every value from files, params or metrics is text, and
markup comes only from the templates. The Markdown card (``*.md.j2``) is not HTML-escaped: Markdown is read
as text (the artifact ``model_card.md``, the registered version's description), where ``&lt;`` and ``&#39;``
would show as such and change what it says (``<= 6 bits``). ``StrictUndefined`` makes a value the template
expects and the code did not pass an error, not an empty string.
"""

from __future__ import annotations

import functools
from typing import Any

import jinja2
from markupsafe import Markup


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a report cell ('n/a' when undefined; floats at ``digits`` decimals); text as is."""
    if value is None:
        return "n/a"
    if isinstance(value, float) and not isinstance(value, bool):
        return f"{value:.{digits}f}"
    return str(value)


def metric(value: Any, digits: int = 4) -> str:
    """A metric for the model card: rounded, or 'n/a' when missing (a bool is no metric)."""
    if isinstance(value, bool) or value is None:
        return "n/a"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}"
    return str(value)


@functools.cache
def environment() -> jinja2.Environment:
    """The shared environment (built on first use: nothing happens at import time)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("cxr.reporting", "templates"),
        # select_autoescape matches the end of the name: "report.html.j2" ends with ".html.j2".
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=True, default=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["fmt"] = fmt
    env.filters["metric"] = metric
    return env


def render_html(name: str, **context: Any) -> Markup:
    """Render an HTML template (autoescaped) into markup that other templates insert as is."""
    if not name.endswith(".html.j2"):
        raise ValueError(f"{name}: not an HTML template (*.html.j2)")
    return Markup(environment().get_template(name).render(**context))


def render_text(name: str, **context: Any) -> str:
    """Render a text template (Markdown: not HTML-escaped)."""
    return environment().get_template(name).render(**context)
