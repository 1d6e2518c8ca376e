"""The dataset's metadata sheets (``<CLASS>.metadata.xlsx``): each image's source archive."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from cxr.data.layout import IMAGE_SUFFIXES, DataError, folder_class, normalise_name

_GENERIC_URL_PARTS = {"c", "d", "datasets", "competitions", "articles", "category", "tree", "blob"}


def source_from_url(url: str) -> str:
    """Short source-archive name from a metadata URL, e.g. 'kaggle.com/c/rsna-pneumonia-detection-challenge'."""
    text = (url or "").strip()
    if not text:
        return "unknown"
    parsed = urlparse(text if "://" in text else f"//{text}")
    host = (parsed.hostname or "").lower()
    if not host or "." not in host:
        return text[:80]
    host = host.removeprefix("www.")
    parts = [p for p in parsed.path.split("/") if p]
    if host in ("kaggle.com", "github.com"):
        lead = [p for p in parts[:1] if p.lower() in _GENERIC_URL_PARTS]
        rest = [p for p in parts[len(lead) :]]
        return "/".join([host, *lead, *rest[: 1 if lead else 2]])
    return "/".join([host, *parts[:1]])


def read_metadata(xlsx: Path) -> dict[str, str]:
    """Map FILE NAME (stem, as in the sheet) -> source archive derived from URL, using openpyxl read-only."""
    import openpyxl  # local: only needed when a sheet is present

    xlsx = Path(xlsx)
    try:
        wb = openpyxl.load_workbook(xlsx, read_only=True, data_only=True)
    except Exception as exc:  # zipfile, XML and KeyError flavours
        raise DataError(f"{xlsx}: cannot read metadata sheet ({type(exc).__name__}: {exc})") from exc
    try:
        if not wb.worksheets:
            raise DataError(f"{xlsx}: metadata workbook has no sheet")
        rows = wb.worksheets[0].iter_rows(values_only=True)
        name_col = url_col = None
        header: tuple = ()
        for header in rows:
            cols = [normalise_name(str(v)) if v is not None else "" for v in header]
            if "filename" in cols:
                name_col = cols.index("filename")
                url_col = cols.index("url") if "url" in cols else None
                break
        if name_col is None:
            raise DataError(f"{xlsx}: no 'FILE NAME' column in the metadata sheet")
        out: dict[str, str] = {}
        for row in rows:
            if name_col >= len(row) or row[name_col] is None:
                continue
            name = str(row[name_col]).strip()
            if not name:
                continue
            if name.lower().endswith(IMAGE_SUFFIXES):
                name = name.rsplit(".", 1)[0]
            url = row[url_col] if url_col is not None and url_col < len(row) else None
            out[name] = source_from_url(str(url)) if url is not None else "unknown"
        return out
    finally:
        wb.close()


def metadata_files(root: Path, cls_dir: Path, cls: str, wanted: Sequence[str]) -> list[Path]:
    """A class's metadata sheets, '<CLASS>.metadata.xlsx' (any alias or 'matadata' typo), at the root or in cls_dir."""
    found = []
    for folder in (root, cls_dir):
        with contextlib.suppress(OSError):
            for e in sorted(os.scandir(folder), key=lambda e: e.name):
                if e.name.startswith(".") or not e.name.lower().endswith(".xlsx") or not e.is_file():
                    continue
                if folder_class(e.name.split(".", 1)[0], wanted) == cls:
                    found.append(Path(e.path))
    return found
