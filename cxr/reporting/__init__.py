"""Reporting: the self-contained HTML report, the model card, Markdown summaries, and their templates."""
