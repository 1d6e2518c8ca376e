"""The raw data's index: one row per image with its content hash, perceptual hash, size, mode and source.

Ingestion decodes and hashes every image once. The download step writes what it learnt beside the class
archives (``data/raw/index.csv``), so the index is versioned with the images in ``data.dvc``, and the
split reads it instead of decoding, hashing and reading the metadata sheets again. Raw data without an
index (restored from an older data version, or unpacked by hand) is still split: the split then computes
the same fields itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cxr.core.io import read_csv, write_csv
from cxr.ops.progress import Progress

log = logging.getLogger(__name__)

INDEX_NAME = "index.csv"
INDEX_FIELDS: tuple[str, ...] = ("path", "folder", "sha256", "dhash", "width", "height", "mode", "source")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class IndexEntry:
    """What the split needs to know of one image without reading it."""

    sha256: str
    dhash: int
    width: int
    height: int
    mode: str
    source: str

    @property
    def fingerprint(self) -> tuple[str, int, tuple[int, int], str]:
        """(sha256, dhash, (width, height), mode), as :func:`cxr.data.duplicates.fingerprint_bytes` gives it."""
        return self.sha256, self.dhash, (self.width, self.height), self.mode


def index_path(raw: Path) -> Path:
    """Where the index of the raw data folder ``raw`` lives."""
    return Path(raw) / INDEX_NAME


def sheet_sources(raw: Path, folders: Iterable[str]) -> dict[str, str]:
    """Image file stem (lower case) -> source archive, from the dataset's metadata sheets where present."""
    from cxr.data.metadata import read_metadata

    out: dict[str, str] = {}
    for folder in folders:
        sheet = Path(raw) / f"{folder}.metadata.xlsx"
        if sheet.is_file():
            out.update({k.lower(): v for k, v in read_metadata(sheet).items()})
    return out


def from_ingestion(records: Iterable) -> dict[str, IndexEntry]:
    """Index entries from :class:`cxr.data.ingestreport.ImageRecord` s (an image without a known source gets ``""``)."""
    return {
        r.path: IndexEntry(r.sha256, r.dhash, r.width, r.height, r.mode, "" if r.source == "unknown" else r.source)
        for r in records
    }


def build_index(
    loose: Path,
    folders: Sequence[str],
    known: Mapping[str, IndexEntry] | None = None,
    workers: int = 2,
) -> dict[str, IndexEntry]:
    """Index every image of the loose canonical layout ``loose`` (``<FOLDER>/images/*``).

    ``known`` holds entries ingestion already computed (by relative path); the rest are decoded and hashed
    here, and their sources read from the metadata sheets.
    """
    from cxr.data.duplicates import fingerprint_bytes

    known = dict(known or {})
    rels = sorted(
        p.relative_to(loose).as_posix()
        for folder in folders
        for p in (Path(loose) / folder / "images").glob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    todo = [rel for rel in rels if rel not in known]
    if todo:
        sources = sheet_sources(loose, folders)

        def entry(rel: str) -> IndexEntry:
            try:
                sha, dh, (w, h), mode = fingerprint_bytes((Path(loose) / rel).read_bytes())
            except Exception as err:  # the message names the file
                raise ValueError(f"{Path(loose) / rel}: cannot be read as an image ({err})") from None
            return IndexEntry(sha, dh, w, h, mode, sources.get(Path(rel).stem.lower(), ""))

        with (
            ThreadPoolExecutor(max(1, workers)) as pool,
            Progress(len(todo), "hashing images for the index", logger=log) as progress,
        ):
            for rel, found in zip(todo, pool.map(entry, todo), strict=True):
                known[rel] = found
                progress.update()
        log.info("indexed %d images (%d from ingestion)", len(rels), len(rels) - len(todo))
    return {rel: known[rel] for rel in rels}


def write_index(path: Path, entries: Mapping[str, IndexEntry]) -> None:
    """Write the index atomically, sorted by path: the same images always give the same bytes."""
    rows = (
        (rel, rel.split("/", 1)[0], e.sha256, f"{e.dhash:x}", e.width, e.height, e.mode, e.source)
        for rel, e in sorted(entries.items())
    )
    write_csv(path, INDEX_FIELDS, (dict(zip(INDEX_FIELDS, row, strict=True)) for row in rows))


def read_index(raw: Path) -> dict[str, IndexEntry] | None:
    """The index of ``raw`` by relative path, or None when the folder has none; a malformed one is an error."""
    path = index_path(raw)
    if not path.is_file():
        return None
    try:
        rows = read_csv(path, required=INDEX_FIELDS)
    except ValueError:
        raise ValueError(f"{path}: not a raw data index (expected the columns {list(INDEX_FIELDS)})") from None
    out: dict[str, IndexEntry] = {}
    for n, row in enumerate(rows, start=2):
        try:
            out[row["path"]] = IndexEntry(
                row["sha256"], int(row["dhash"], 16), int(row["width"]), int(row["height"]), row["mode"], row["source"]
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}, line {n}: malformed row ({err})") from None
    return out
