"""Atomic file output and the small readers every step shares: a crash never leaves a half-written file.

Every output is written to a hidden temporary sibling (``.<name>.<pid>.<thread>.tmp``) and renamed over the
target in one step (``os.replace``), so a reader, DVC or a rerun sees the old file or the new one, never a
part. The temporary file is removed when writing fails.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; renamed over ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open(path, mode)`` that replaces ``path`` only once the block has written everything."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    if mode == "w":
        kwargs.setdefault("newline", "")
        kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:  # noqa: PTH123 - mode is checked above
        yield fh


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_open(path) as fh:
        fh.write(text)


def write_json(path: Path, data: Any, sort_keys: bool = False) -> None:
    """Write indented JSON atomically (metrics, reports: never half a file)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")


def write_csv(path: Path, fields: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """Write rows (mappings keyed by ``fields``) as a CSV with a header, atomically, with ``\\n`` line ends."""
    with atomic_open(path) as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fields), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path, required: Sequence[str] = ()) -> list[dict[str, str]]:
    """The rows of a CSV file with a header; ValueError naming the file when ``required`` columns are missing."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = sorted(set(required) - set(reader.fieldnames or ()))
        if missing:
            raise ValueError(f"{path}: lacks the columns {missing}")
        return list(reader)


def read_json(path: Path, default: Any = None) -> Any:
    """A JSON file's value; ``default`` when the file does not exist; ValueError naming it when it is not JSON."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
