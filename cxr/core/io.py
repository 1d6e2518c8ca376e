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


def ensure_writable(*folders: Path) -> None:
    """Make each folder (and its parents) and prove it takes a file, before a step spends minutes on its work.

    Raises the OSError (PermissionError, NotADirectoryError, a read-only file system ...) naming the folder.
    """
    for folder in map(Path, folders):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(folder / ".write-test") as probe:
                probe.write_bytes(b"")
            (folder / ".write-test").unlink()
        except OSError as err:
            raise type(err)(err.errno, f"cannot write there ({err.strerror})", str(folder)) from None


class StagedOutputs:
    """A step's output files, written as one set: each to a temporary sibling first, all renamed into place once
    every one is written (:func:`staged_outputs`). A failure part-way leaves every old file as it was."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []

    @contextlib.contextmanager
    def path(self, target: Path) -> Iterator[Path]:
        """A temporary path to write ``target``'s new content to (renamed when the whole set is written)."""
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        self._staged.append((tmp, target))
        yield tmp

    def write_text(self, target: Path, text: str) -> None:
        with self.path(target) as tmp:
            tmp.write_text(text, encoding="utf-8")

    def write_json(self, target: Path, data: Any, sort_keys: bool = False) -> None:
        self.write_text(target, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")

    def write_csv(self, target: Path, fields: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
        with self.path(target) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(fields), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)

    def commit(self) -> None:
        for tmp, target in self._staged:
            os.replace(tmp, target)
        self._staged.clear()

    def discard(self) -> None:
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged.clear()


@contextlib.contextmanager
def staged_outputs() -> Iterator[StagedOutputs]:
    """Write a set of files that appear together or not at all (see :class:`StagedOutputs`)."""
    staged = StagedOutputs()
    try:
        yield staged
    except BaseException:
        staged.discard()
        raise
    staged.commit()
