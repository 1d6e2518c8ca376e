"""The split manifest: one row per image (path, class, split, content hash, duplicate group, source)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxr.core.io import read_csv, write_csv

if TYPE_CHECKING:  # only for annotations: the served model reads images through this module without pydantic
    pass


MANIFEST_FIELDS: tuple[str, ...] = ("path", "folder", "label", "split", "sha256", "group", "source")


SPLITS: tuple[str, ...] = ("train", "valid", "test")


@dataclass(frozen=True)
class Manifest:
    """The split manifest: one row per image, paths relative to the raw data folder."""

    rows: tuple[dict[str, str], ...]

    def select(self, split: str) -> Manifest:
        """Rows of one split."""
        return Manifest(tuple(r for r in self.rows if r["split"] == split))

    def labels(self, classes: Sequence[str]) -> np.ndarray:
        """Label indices in ``classes`` order."""
        index = {c: i for i, c in enumerate(classes)}
        try:
            return np.array([index[r["label"]] for r in self.rows], dtype=np.int64)
        except KeyError as err:
            raise ValueError(f"manifest label {err.args[0]!r} is not one of {list(classes)}") from None

    def __len__(self) -> int:
        return len(self.rows)


def read_manifest(path: Path) -> Manifest:
    """Read a manifest CSV written by the split step."""
    try:
        return Manifest(tuple(read_csv(path, required=MANIFEST_FIELDS)))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: manifest not found; run the split step first") from None


def write_manifest(rows: Sequence[dict[str, str]], path: Path) -> None:
    """Write a manifest atomically, byte-identical for identical rows."""
    write_csv(path, MANIFEST_FIELDS, rows)


def manifest_hash(manifest) -> str:
    """The identity of the data a checkpoint was trained on."""
    import hashlib

    h = hashlib.sha256()
    for r in manifest.rows:
        h.update(f"{r['path']}|{r['sha256']}|{r['label']}|{r['split']}\n".encode())
    return h.hexdigest()[:16]
