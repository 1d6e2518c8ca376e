"""Markdown for Prefect artifacts, MLflow text artifacts and notices: the one place tables and lists are written.

Plain text only (no HTML): values from files and params are escaped for table cells, so a ``|`` or a line
break in a class name or a file path cannot break the table.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def cell(value: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], right: Sequence[int] = ()) -> list[str]:
    """A Markdown table as lines; columns whose index is in ``right`` are right-aligned (numbers)."""
    rule = ["---:" if i in right else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines


def bullets(items: Iterable[Any]) -> list[str]:
    """A Markdown list as lines."""
    return [f"- {cell(item)}" for item in items]


def ci(block: dict[str, Any], key: str, digits: int = 3) -> str:
    """A figure with its interval, ``0.912 [0.880, 0.940]``, from ``key``, ``key_ci_low`` and ``key_ci_high``."""
    point = block.get(key)
    if point is None:
        return "n/a"
    lo, hi = block.get(f"{key}_ci_low"), block.get(f"{key}_ci_high")
    if lo is None or hi is None:
        return f"{point:.{digits}f}"
    return f"{point:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
