"""Ingest the COVID-19 Radiography Database (any known layout, folder or .zip) into one canonical layout."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import socket
import stat
import threading
import time
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence
from urllib.parse import urlparse

from PIL import Image, ImageFile, JpegImagePlugin, PngImagePlugin, UnidentifiedImageError

from cxr.dedup import pil_dhash
from cxr.rawstore import fresh_dir

logger = logging.getLogger(__name__)

CANONICAL_CLASSES = ("COVID", "Normal", "Lung_Opacity", "Viral Pneumonia")
CLASS_ALIASES: dict[str, str] = {
    "covid": "COVID",
    "covid19": "COVID",
    "normal": "Normal",
    "lungopacity": "Lung_Opacity",
    "viralpneumonia": "Viral Pneumonia",
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LAYOUTS = ("v5", "flat")
MIN_SIDE = 64
MAX_PIXELS = 25_000_000  # download.max_pixels's default
MAX_ROOT_DEPTH = 3
KAGGLE_HOST = "www.kaggle.com"

_IGNORED_DIRS = {"__macosx"}
_RATIO_MIN_BYTES = 1 << 20
_MAX_LISTED_BAD = 20


class DataError(ValueError):
    """Bad input data; message names the file or folder."""


class DownloadError(RuntimeError):
    """The dataset could not be downloaded (offline, no credentials, or Kaggle refused)."""


@dataclass(frozen=True)
class BadFile:
    """A file refused by validation, with the reason."""

    path: str
    reason: str


@dataclass(frozen=True)
class ImageRecord:
    """One ingested image: where it went, its hashes and properties."""

    cls: str
    path: str
    original: str
    sha256: str
    dhash: int
    width: int
    height: int
    mode: str
    format: str
    nbytes: int
    source: str
    mask: str | None = None


@dataclass
class IngestReport:
    """What ingest() did: counts per class, bad files, sources, duplicates."""

    dest: Path
    layout: str
    counts: dict[str, int]
    masks: dict[str, int]
    bad: list[BadFile]
    sources: dict[str, dict[str, int]]
    source: str = ""
    duplicates: list[list[str]] = field(default_factory=list)
    conflicts: list[list[str]] = field(default_factory=list)
    count_mismatch: dict[str, dict[str, int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    records: list[ImageRecord] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True when nothing was refused, counts match and no image sits in two classes."""
        return not self.bad and not self.count_mismatch and not self.conflicts

    def to_dict(self, include_records: bool = False) -> dict:
        """JSON-ready summary (records only when asked: they are one entry per image)."""
        out = {
            "dest": str(self.dest),
            "source": self.source,
            "layout": self.layout,
            "ok": self.ok,
            "total": sum(self.counts.values()),
            "counts": dict(self.counts),
            "masks": dict(self.masks),
            "bad": [asdict(b) for b in self.bad],
            "sources": {k: dict(v) for k, v in self.sources.items()},
            "duplicates": [list(g) for g in self.duplicates],
            "conflicts": [list(g) for g in self.conflicts],
            "count_mismatch": {k: dict(v) for k, v in self.count_mismatch.items()},
            "warnings": list(self.warnings),
            "elapsed_s": round(self.elapsed_s, 3),
        }
        if include_records:
            out["records"] = [asdict(r) for r in self.records]
        return out

    def to_json(self, include_records: bool = False) -> str:
        """to_dict() as indented JSON."""
        return json.dumps(self.to_dict(include_records), indent=2, sort_keys=True)


# ----------------------------------------------------------------------------- class names and layout


def normalise_name(name: str) -> str:
    """Lower-case a folder name and drop spaces, underscores and hyphens."""
    return re.sub(r"[\s_\-]+", "", name).lower()


def canonical_class(name: str) -> str | None:
    """Canonical class for a folder or class name, or None when it is not a known alias."""
    return CLASS_ALIASES.get(normalise_name(name))


def _resolve_classes(classes: Sequence[str]) -> list[str]:
    """Canonical names of the requested classes, order kept, duplicates dropped."""
    if isinstance(classes, str):
        raise TypeError("classes must be a sequence of class names, not one string")
    out: list[str] = []
    for c in classes:
        name = canonical_class(c) or str(c)
        if name not in out:
            out.append(name)
    if not out:
        raise DataError("no classes requested")
    return out


def _folder_class(name: str, wanted: Sequence[str]) -> str | None:
    """Class a folder name stands for: a known alias, or a requested class with no alias."""
    canon = canonical_class(name)
    if canon is not None:
        return canon
    norm = normalise_name(name)
    for w in wanted:
        if normalise_name(w) == norm:
            return w
    return None


def _visible_dirs(folder: Path) -> list[Path]:
    """Sub-folders of folder, sorted, without hidden and __MACOSX folders."""
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        raise DataError(f"cannot list folder {folder}: {exc}") from exc
    out = []
    for e in entries:
        if e.name.startswith(".") or e.name.lower() in _IGNORED_DIRS:
            continue
        with contextlib.suppress(OSError):
            if e.is_dir():
                out.append(Path(e.path))
    return sorted(out)


def _class_dirs(folder: Path, wanted: Sequence[str]) -> dict[str, list[Path]]:
    """Class -> sub-folders of folder whose names map to that class."""
    found: dict[str, list[Path]] = {}
    for d in _visible_dirs(folder):
        cls = _folder_class(d.name, wanted)
        if cls is not None:
            found.setdefault(cls, []).append(d)
    return found


def find_dataset_root(path: Path, classes: Sequence[str]) -> tuple[Path, str]:
    """Locate the folder holding the class folders; return it and the layout name ('v5' or 'flat')."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"dataset folder {path} does not exist or is not a folder")
    wanted = _resolve_classes(classes)
    candidates: list[tuple[int, int, int, Path, dict[str, list[Path]]]] = []
    frontier = [path]
    for depth in range(MAX_ROOT_DEPTH + 1):
        next_frontier: list[Path] = []
        for folder in frontier:
            dirs = _class_dirs(folder, wanted)
            if dirs:
                n_wanted = sum(1 for c in wanted if c in dirs)
                candidates.append((-n_wanted, -len(dirs), depth, folder, dirs))
            elif depth < MAX_ROOT_DEPTH:
                next_frontier.extend(_visible_dirs(folder))
        frontier = next_frontier
    if not candidates:
        raise DataError(
            f"no class folders ({', '.join(wanted)}) found in {path} or up to {MAX_ROOT_DEPTH} folders below it"
        )
    candidates.sort(key=lambda c: c[:3])
    best = candidates[0]
    ties = [c[3] for c in candidates[1:] if c[:3] == best[:3]]
    if ties:
        raise DataError(
            f"ambiguous dataset root under {path}: class folders in both {best[3]} and {', '.join(map(str, ties))}"
        )
    root, dirs = best[3], best[4]
    for cls in wanted:
        if cls not in dirs:
            present = ", ".join(sorted(d.name for ds in dirs.values() for d in ds)) or "none"
            raise DataError(f"class {cls!r} missing: no folder for it in {root} (class folders found: {present})")
        if len(dirs[cls]) > 1:
            raise DataError(
                f"class {cls!r} has several folders in {root}: {', '.join(d.name for d in dirs[cls])}"
            )
    layout = "v5" if any((dirs[c][0] / "images").is_dir() for c in wanted) else "flat"
    return root, layout


# ----------------------------------------------------------------------------- zip extraction


def _member_parts(info: zipfile.ZipInfo) -> list[str]:
    """Safe relative path parts of a zip member; DataError when it is absolute or climbs out."""
    name = info.filename
    if "\x00" in name:
        raise DataError(f"zip member {name!r}: NUL byte in its name")
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise DataError(f"zip member {name!r}: absolute path refused")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DataError(f"zip member {name!r}: parent reference '..' refused")
    return parts


def _check_members(
    archive: Path, infos: list[zipfile.ZipInfo], max_total_bytes: int, max_ratio: float, max_members: int
) -> list[tuple[zipfile.ZipInfo, list[str], bool]]:
    """Validate every member's name, type and size before anything is extracted."""
    if len(infos) > max_members:
        raise DataError(f"zip {archive}: {len(infos)} members, more than the limit of {max_members}")
    plan = []
    total = total_packed = 0
    for info in infos:
        parts = _member_parts(info)
        if not parts or parts[0].lower() in _IGNORED_DIRS:
            continue
        ftype = stat.S_IFMT(info.external_attr >> 16)
        if ftype == stat.S_IFLNK:
            raise DataError(f"zip member {info.filename!r}: symbolic link refused")
        if ftype not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise DataError(f"zip member {info.filename!r}: special file (mode {oct(ftype)}) refused")
        is_dir = info.is_dir() or ftype == stat.S_IFDIR
        if not is_dir:
            if info.flag_bits & 0x1:
                raise DataError(f"zip member {info.filename!r}: encrypted members are not supported")
            total += info.file_size
            total_packed += info.compress_size
            if total > max_total_bytes:
                raise DataError(
                    f"zip member {info.filename!r}: total uncompressed size passes the limit of {max_total_bytes} bytes"
                )
            if info.file_size > _RATIO_MIN_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
                raise DataError(
                    f"zip member {info.filename!r}: compression ratio "
                    f"{info.file_size / max(info.compress_size, 1):.0f} passes the limit of {max_ratio:g}"
                )
        plan.append((info, parts, is_dir))
    if total > _RATIO_MIN_BYTES and total > max_ratio * max(total_packed, 1):
        raise DataError(f"zip {archive}: overall compression ratio passes the limit of {max_ratio:g}")
    return plan


def safe_extract(
    archive: Path,
    target: Path,
    max_total_bytes: int = 4 * 2**30,
    max_ratio: float = 200.0,
    max_members: int = 200_000,
) -> Path:
    """Extract a zip safely (no absolute, '..', symlink or oversize members) into target, atomically."""
    archive, target = Path(archive), Path(target)
    if target.exists():
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        else:
            raise DataError(f"extraction target {target} already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{archive}: not a readable zip archive ({exc})") from exc
    with zf:
        plan = _check_members(archive, zf.infolist(), max_total_bytes, max_ratio, max_members)
        tmp = fresh_dir(target.parent, f".{target.name}.partial-")
        try:
            root = tmp.resolve()
            written = 0
            for info, parts, is_dir in plan:
                out = tmp.joinpath(*parts)
                if not out.resolve().is_relative_to(root):  # defence in depth
                    raise DataError(f"zip member {info.filename!r}: resolves outside the target")
                if is_dir:
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with zf.open(info) as src, open(out, "xb") as dst:
                        while chunk := src.read(1 << 20):
                            written += len(chunk)
                            if written > max_total_bytes:
                                raise DataError(
                                    f"zip member {info.filename!r}: extracted size passes the limit of {max_total_bytes} bytes"
                                )
                            dst.write(chunk)
                except FileExistsError as exc:
                    raise DataError(f"zip member {info.filename!r}: appears twice in {archive}") from exc
                except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError) as exc:
                    raise DataError(f"zip member {info.filename!r}: cannot extract ({exc})") from exc
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    logger.info("extracted %d members of %s into %s (%d bytes)", len(plan), archive, target, written)
    return target


# ----------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class _Inspection:
    """Result of decoding one file from its bytes."""

    reason: str | None
    sha256: str = ""
    dhash: int = 0
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    nbytes: int = 0


def _alpha_is_real(im: Image.Image) -> bool:
    """True when an image with an alpha channel (or tRNS) is not fully opaque."""
    if im.mode in ("RGBA", "LA"):
        return im.getchannel("A").getextrema()[0] < 255
    if "transparency" in im.info:
        return im.convert("RGBA").getchannel("A").getextrema()[0] < 255
    return False


def _check_decoded(im: Image.Image, expect_mask: bool) -> str | None:
    """Reason a decoded image is unusable (mode, alpha, size), else None."""
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        return f"unsupported mode {mode} (16/32-bit; expected 8-bit L or RGB)"
    allowed = ("1", "L", "P", "RGB", "RGBA", "LA") if expect_mask else ("L", "RGB", "RGBA", "LA")
    if mode not in allowed:
        return f"unsupported mode {mode} (expected L or RGB)"
    if not expect_mask and _alpha_is_real(im):
        return f"unsupported mode {mode} with real transparency (alpha channel not fully opaque)"
    if min(im.size) < MIN_SIDE:
        return f"too small ({im.width}x{im.height}, need at least {MIN_SIDE} px a side)"
    return None


def _open_header(data: bytes) -> Image.Image:
    """Parse a PNG's or JPEG's header (nothing decoded yet); other content through ``Image.open``.

    PNG and JPEG go straight to their Pillow plugins, as ``Image.open`` would, without its
    decompression-bomb check: ``download.max_pixels`` is the limit here, checked by the caller from
    the header, and Pillow's own would only warn (or refuse, with its limit in the message) first.
    """
    fp = io.BytesIO(data)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return PngImagePlugin.PngImageFile(fp)
    if data.startswith(b"\xff\xd8\xff"):
        return JpegImagePlugin.JpegImageFile(fp)
    return Image.open(fp)


def _inspect_bytes(
    data: bytes, expect_mask: bool = False, fingerprint: bool = True, max_pixels: int = MAX_PIXELS
) -> _Inspection:
    """Validate an encoded image by a full decode of its bytes; hash it when valid."""
    if not data:
        return _Inspection("empty file (0 bytes)")
    try:
        im = _open_header(data)
    except UnidentifiedImageError:
        return _Inspection("not an image (unrecognised content)")
    except Exception as exc:  # PIL raises many kinds for corrupt headers
        return _Inspection(f"not an image ({type(exc).__name__}: {exc})")
    with im:
        fmt = im.format or "?"
        if fmt not in ("PNG", "JPEG"):
            return _Inspection(f"unsupported format {fmt} (expected PNG or JPEG)")
        if im.width * im.height > max_pixels:
            return _Inspection(
                f"too large ({im.width}x{im.height} = {im.width * im.height:,} pixels, above "
                f"download.max_pixels = {max_pixels:,}); not decoded"
            )
        if fmt == "PNG" and data.rfind(b"IEND") < 0:
            return _Inspection("truncated PNG (no IEND chunk)")
        if fmt == "JPEG" and not data.rstrip(b"\x00\r\n ")[-2:] == b"\xff\xd9":
            return _Inspection("truncated JPEG (no end-of-image marker)")
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            logger.debug("PIL LOAD_TRUNCATED_IMAGES is on; relying on end-marker checks")
        try:
            im.load()
        except Exception as exc:  # truncated data, CRC errors, decompression bombs
            return _Inspection(f"truncated or corrupt {fmt} ({type(exc).__name__}: {exc})")
        reason = _check_decoded(im, expect_mask)
        if reason:
            return _Inspection(reason)
        digest = hashlib.sha256(data).hexdigest()
        dh = pil_dhash(im) if fingerprint else 0
        return _Inspection(None, digest, dh, im.width, im.height, im.mode, fmt, len(data))


def validate_image(path: Path, expect_mask: bool = False, max_pixels: int = MAX_PIXELS) -> str | None:
    """Fully decode an image file; return the reason it is bad, or None when it is a usable PNG/JPEG."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    return _inspect_bytes(data, expect_mask, fingerprint=False, max_pixels=max_pixels).reason


# ----------------------------------------------------------------------------- metadata


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


def _metadata_files(root: Path, cls_dir: Path, cls: str, wanted: Sequence[str]) -> list[Path]:
    """Metadata sheets for a class: '<CLASS>.metadata.xlsx' (any alias, any 'matadata' typo) at the root or in its folder."""
    found = []
    for folder in (root, cls_dir):
        with contextlib.suppress(OSError):
            for e in sorted(os.scandir(folder), key=lambda e: e.name):
                if e.name.startswith(".") or not e.name.lower().endswith(".xlsx") or not e.is_file():
                    continue
                if _folder_class(e.name.split(".", 1)[0], wanted) == cls:
                    found.append(Path(e.path))
    return found


# ----------------------------------------------------------------------------- ingest


@dataclass(frozen=True)
class _Task:
    """One file to validate (and stage): an image or a mask."""

    cls: str
    src: Path
    rel: str
    out: str
    is_mask: bool


def _list_files(folder: Path) -> tuple[list[Path], list[str]]:
    """Image files of a folder (sorted) and the names of other entries that were ignored."""
    images, ignored = [], []
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        raise DataError(f"cannot list folder {folder}: {exc}") from exc
    for e in entries:
        if e.name.startswith("."):
            ignored.append(e.name)
        elif e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file():
            images.append(Path(e.path))
        else:
            ignored.append(e.name)
    return sorted(images), sorted(ignored)


def _plan_class(root: Path, cls: str, cls_dir: Path, warnings: list[str]) -> list[_Task]:
    """Image and mask tasks of one class folder (v5 images/ + masks/, or flat)."""
    img_dir = cls_dir / "images" if (cls_dir / "images").is_dir() else cls_dir
    images, ignored = _list_files(img_dir)
    ignored = [n for n in ignored if not (img_dir == cls_dir and n in ("images", "masks"))]
    if ignored:
        msg = f"class {cls!r}: ignored {len(ignored)} non-image entries in {img_dir} (e.g. {ignored[0]!r})"
        logger.warning(msg)
        warnings.append(msg)
    if not images:
        raise DataError(f"class {cls!r}: folder {img_dir} has no images ({', '.join(IMAGE_SUFFIXES)})")
    names = {p.name for p in images}
    tasks = [
        _Task(cls, p, p.relative_to(root).as_posix(), f"{cls}/images/{p.name}", False) for p in images
    ]
    mask_dir = cls_dir / "masks"
    if mask_dir.is_dir():
        masks, _ = _list_files(mask_dir)
        orphans = [m.name for m in masks if m.name not in names]
        if orphans:
            msg = f"class {cls!r}: {len(orphans)} masks without an image in {mask_dir} (e.g. {orphans[0]!r}), ignored"
            logger.warning(msg)
            warnings.append(msg)
        tasks += [
            _Task(cls, m, m.relative_to(root).as_posix(), f"{cls}/masks/{m.name}", True)
            for m in masks
            if m.name in names
        ]
    return tasks


def _process(task: _Task, build: Path, max_pixels: int = MAX_PIXELS) -> _Inspection:
    """Read a file once, validate and hash it from those bytes, and stage the bytes when valid."""
    try:
        data = task.src.read_bytes()
    except OSError as exc:
        return _Inspection(f"unreadable ({exc.strerror or exc})")
    result = _inspect_bytes(data, expect_mask=task.is_mask, fingerprint=not task.is_mask, max_pixels=max_pixels)
    if result.reason is None:
        with open(build / task.out, "xb") as fh:
            fh.write(data)
    return result


def _run_all(tasks: list[_Task], fn: Callable[[_Task], _Inspection], workers: int) -> list[_Inspection]:
    """Apply fn to every task, in order, on a thread pool when workers > 1."""
    if workers <= 1 or len(tasks) < 2:
        return [fn(t) for t in tasks]
    chunk = max(1, min(256, len(tasks) // (workers * 4) or 1))
    chunks = [tasks[i : i + chunk] for i in range(0, len(tasks), chunk)]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest") as pool:
        parts = pool.map(lambda ts: [fn(t) for t in ts], chunks)
        return [r for part in parts for r in part]


def _bad_message(source: Path, bad: list[BadFile]) -> str:
    """DataError text listing bad files (the first few) with reasons."""
    shown = "; ".join(f"{b.path}: {b.reason}" for b in bad[:_MAX_LISTED_BAD])
    more = f"; ... and {len(bad) - _MAX_LISTED_BAD} more" if len(bad) > _MAX_LISTED_BAD else ""
    return f"{len(bad)} bad file(s) in {source}: {shown}{more}. Fix them or use policy 'skip' to leave them out."


def _check_paths(source: Path, dest: Path) -> None:
    """Refuse a destination that is, holds or sits inside the source."""
    s, d = source.resolve(), dest.resolve()
    if s == d or d.is_relative_to(s) or s.is_relative_to(d):
        raise DataError(f"destination {dest} overlaps the source {source}; choose a separate folder")
    if dest.exists() and not dest.is_dir():
        raise DataError(f"destination {dest} exists and is not a folder")


def _replace_dir(build: Path, dest: Path) -> None:
    """Move build to dest, replacing an existing dest only once the new one is in place."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(dest, old)
    try:
        os.rename(build, dest)
    except BaseException:
        if old is not None:
            os.rename(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _temp_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A temporary folder in parent (the user's umask, as it may become the destination), removed on exit if still there."""
    path = fresh_dir(parent, prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _find_duplicates(records: list[ImageRecord]) -> tuple[list[list[str]], list[list[str]]]:
    """Groups of ingested paths with identical bytes, and those of them that span classes."""
    by_hash: dict[str, list[ImageRecord]] = {}
    for r in records:
        by_hash.setdefault(r.sha256, []).append(r)
    dups = [[r.path for r in g] for g in by_hash.values() if len(g) > 1]
    conflicts = [[r.path for r in g] for g in by_hash.values() if len({r.cls for r in g}) > 1]
    return dups, conflicts


def ingest(
    source: Path,
    dest: Path,
    classes: Sequence[str],
    policy: str = "fail",
    expected_counts: Mapping[str, int] | None = None,
    workers: int = 1,
    max_pixels: int = MAX_PIXELS,
) -> IngestReport:
    """Ingest a folder or .zip in any known layout into canonical dest/<CLASS>/images (+ masks, metadata), atomically."""
    t0 = time.perf_counter()
    if policy not in ("fail", "skip"):
        raise ValueError(f"policy must be 'fail' or 'skip', got {policy!r}")
    source, dest = Path(source), Path(dest)
    if not source.exists():
        raise DataError(f"source {source} does not exist")
    wanted = _resolve_classes(classes)
    _check_paths(source, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    warnings: list[str] = []

    with contextlib.ExitStack() as stack:
        if source.is_file():
            if not zipfile.is_zipfile(source):
                raise DataError(f"source {source} is neither a folder nor a .zip archive")
            unzip = stack.enter_context(_temp_dir(dest.parent, f".{dest.name}.unzip-"))
            folder = safe_extract(source, unzip / "src")
        else:
            folder = source
        root, layout = find_dataset_root(folder, wanted)
        class_dirs = _class_dirs(root, wanted)
        for d in _visible_dirs(root):
            cls = _folder_class(d.name, wanted)
            if cls is not None and cls not in wanted:
                logger.info("ignoring folder %s (class %r not requested)", d, cls)

        tasks: list[_Task] = []
        metadata: dict[str, dict[str, str]] = {}
        sheets: dict[str, Path] = {}
        bad_sheets: list[BadFile] = []
        for cls in wanted:
            cls_dir = class_dirs[cls][0]
            tasks += _plan_class(root, cls, cls_dir, warnings)
            for sheet in _metadata_files(root, cls_dir, cls, wanted)[:1]:
                try:
                    metadata[cls] = {k.lower(): v for k, v in read_metadata(sheet).items()}
                    sheets[cls] = sheet
                except DataError as exc:
                    # A sheet is input like an image: it names each image's source archive.
                    if policy == "fail":
                        raise DataError(f"{exc}. Fix it, remove it, or use policy 'skip' to leave it out.") from None
                    bad_sheets.append(BadFile(sheet.relative_to(root).as_posix(), str(exc).removeprefix(f"{sheet}: ")))
                    logger.warning("skipping metadata sheet %s for class %r: %s", sheet, cls, exc)

        build = stack.enter_context(_temp_dir(dest.parent, f".{dest.name}.build-"))
        for cls in wanted:
            (build / cls / "images").mkdir(parents=True)
            if any(t.is_mask for t in tasks if t.cls == cls):
                (build / cls / "masks").mkdir(parents=True)
        logger.info("ingesting %d files (%s layout) from %s with %d worker(s)", len(tasks), layout, root, workers)
        results = _run_all(tasks, lambda t: _process(t, build, max_pixels), max(1, workers))

        bad = [BadFile(t.rel, r.reason) for t, r in zip(tasks, results) if r.reason is not None]
        if bad and policy == "fail":
            raise DataError(_bad_message(source, bad))
        for b in bad:
            logger.warning("skipping bad file %s: %s", b.path, b.reason)
        bad += bad_sheets

        good_images = {(t.cls, t.src.name) for t, r in zip(tasks, results) if not t.is_mask and r.reason is None}
        counts = {cls: 0 for cls in wanted}
        masks = {cls: 0 for cls in wanted}
        sources: dict[str, dict[str, int]] = {cls: {} for cls in wanted}
        mask_of: dict[tuple[str, str], str] = {}
        for t, r in zip(tasks, results):
            if t.is_mask and r.reason is None:
                if (t.cls, t.src.name) in good_images:
                    masks[t.cls] += 1
                    mask_of[(t.cls, t.src.name)] = t.out
                else:  # image refused under policy skip: drop its mask too
                    (build / t.out).unlink(missing_ok=True)
        records: list[ImageRecord] = []
        for t, r in zip(tasks, results):
            if t.is_mask or r.reason is not None:
                continue
            src_name = metadata.get(t.cls, {}).get(t.src.stem.lower(), "unknown")
            counts[t.cls] += 1
            sources[t.cls][src_name] = sources[t.cls].get(src_name, 0) + 1
            records.append(
                ImageRecord(t.cls, t.out, t.rel, r.sha256, r.dhash, r.width, r.height, r.mode, r.format,
                            r.nbytes, src_name, mask_of.get((t.cls, t.src.name)))
            )
        for cls in wanted:
            if counts[cls] == 0:
                raise DataError(f"class {cls!r}: no valid images in {class_dirs[cls][0]} (all {len(bad)} refused)")
            if masks[cls] == 0 and (build / cls / "masks").is_dir():
                (build / cls / "masks").rmdir()
        for cls, sheet in sheets.items():
            shutil.copyfile(sheet, build / f"{cls}.metadata.xlsx")

        dups, conflicts = _find_duplicates(records)
        if dups:
            logger.warning(
                "%d groups of exact duplicate files (identical bytes, kept; see report.duplicates), e.g. %s",
                len(dups), "; ".join(", ".join(g) for g in dups[:3]),
            )
        if conflicts:
            logger.warning(
                "%d identical images in several classes (label conflicts; see report.conflicts), e.g. %s",
                len(conflicts), "; ".join(", ".join(g) for g in conflicts[:3]),
            )

        mismatch: dict[str, dict[str, int]] = {}
        for name, n in (expected_counts or {}).items():
            cls = canonical_class(name) or name
            if cls in counts and counts[cls] != int(n):
                mismatch[cls] = {"expected": int(n), "found": counts[cls]}
                logger.warning("class %r: expected %d images, found %d", cls, int(n), counts[cls])

        _replace_dir(build, dest)

    report = IngestReport(
        dest=dest,
        layout=layout,
        counts=counts,
        masks=masks,
        bad=bad,
        sources=sources,
        source=str(source),
        duplicates=dups,
        conflicts=conflicts,
        count_mismatch=mismatch,
        warnings=warnings,
        records=records,
        elapsed_s=time.perf_counter() - t0,
    )
    logger.info(
        "ingested %d images into %s in %.2fs (%s); %d bad, %d duplicate groups",
        sum(counts.values()), dest, report.elapsed_s, counts, len(bad), len(dups),
    )
    return report


# ----------------------------------------------------------------------------- Kaggle download


def _credentials_source() -> str | None:
    """Where Kaggle credentials come from, or None when there are none."""
    env = os.environ
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    if env.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    home = Path.home()
    folders = [home / ".kaggle", home / ".config" / "kaggle"]
    if env.get("KAGGLE_CONFIG_DIR"):
        folders.insert(0, Path(env["KAGGLE_CONFIG_DIR"]))
    if env.get("XDG_CONFIG_HOME"):
        folders.append(Path(env["XDG_CONFIG_HOME"]) / "kaggle")
    for folder in folders:
        for name in ("kaggle.json", "access_token"):
            if (folder / name).is_file():
                return str(folder / name)
    with contextlib.suppress(Exception):  # kagglehub's own lookup (API differs between versions)
        from kagglehub.config import get_kaggle_credentials

        if get_kaggle_credentials():
            return "kagglehub"
    return None


def _reachable(host: str, port: int, timeout_s: float) -> str | None:
    """None when a TCP connection to host:port opens within timeout_s (DNS included), else the reason."""
    outcome: list[str | None] = []

    def attempt() -> None:
        """Open and close one connection, recording the outcome."""
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                outcome.append(None)
        except OSError as exc:
            outcome.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=attempt, name="kaggle-reachability", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        return f"no answer within {timeout_s:g}s"
    return outcome[0]


def _proxy_endpoint() -> tuple[str, int] | None:
    """Host and port of an HTTPS proxy from the environment, if one is set."""
    for key in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        if os.environ.get(key):
            parsed = urlparse(os.environ[key] if "://" in os.environ[key] else f"//{os.environ[key]}")
            if parsed.hostname:
                return parsed.hostname, parsed.port or 8080
    return None


def _cached_version(cache_dir: Path, handle: str, version: int | None) -> Path | None:
    """A complete earlier kagglehub download of handle (that version, or the newest) under cache_dir."""
    base = cache_dir / "datasets" / handle
    if version is not None:
        candidates = [version]
    else:
        found = base.glob("*.complete") if base.is_dir() else []
        candidates = sorted((int(m.stem) for m in found if m.stem.isdigit()), reverse=True)
    for v in candidates:
        path = base / "versions" / str(v)
        if (base / f"{v}.complete").is_file() and path.is_dir():  # kagglehub's completion marker
            return path
    return None


@contextlib.contextmanager
def _env(key: str, value: str) -> Iterator[None]:
    """Set an environment variable for the duration of a block."""
    old = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def download_kaggle(handle: str, version: int | None, cache_dir: Path, timeout_s: float = 10.0) -> Path:
    """Download a Kaggle dataset with kagglehub into cache_dir (reusing an earlier download); DownloadError fast when offline or unauthenticated."""
    handle = handle.strip().strip("/")
    if "/versions/" in handle:
        handle, _, pinned = handle.partition("/versions/")
        if version is not None and int(pinned) != version:
            raise ValueError(f"handle pins version {pinned} but version={version} was given")
        version = int(pinned)
    if handle.count("/") != 1:
        raise ValueError(f"Kaggle handle must look like 'owner/dataset', got {handle!r}")
    cache_dir = Path(cache_dir).expanduser().resolve()
    fix = "or ingest a local copy instead (data source: local, with path: <folder or .zip of the dataset>)"

    cached = _cached_version(cache_dir, handle, version)
    if cached is not None and version is not None:
        logger.info("reusing cached Kaggle download %s", cached)
        return cached

    problem = None
    creds = _credentials_source()
    if creds is None:
        problem = (
            "no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY, or put kaggle.json in ~/.kaggle/ "
            "(or ~/.config/kaggle/)"
        )
    else:
        host, port = _proxy_endpoint() or (KAGGLE_HOST, 443)
        reason = _reachable(host, port, timeout_s)
        if reason is not None:
            problem = f"cannot reach {host}:{port} ({reason}); the machine seems offline"
    if problem is not None:
        if cached is not None:
            logger.warning("%s; using the newest cached download %s", problem, cached)
            return cached
        raise DownloadError(f"cannot download Kaggle dataset {handle!r}: {problem}; {fix}")

    try:
        import kagglehub
    except ImportError as exc:
        raise DownloadError(f"kagglehub is not installed (pip install kagglehub); {fix}") from exc
    ref = handle if version is None else f"{handle}/versions/{version}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    logger.info("downloading Kaggle dataset %s into %s (credentials: %s)", ref, cache_dir, creds)
    try:
        with _env("KAGGLEHUB_CACHE", str(cache_dir)):
            path = kagglehub.dataset_download(ref)
    except Exception as exc:  # kagglehub raises requests/HTTP/own errors
        raise DownloadError(f"kagglehub could not download {ref!r}: {type(exc).__name__}: {exc}; {fix}") from exc
    logger.info("Kaggle dataset %s is at %s", ref, path)
    return Path(path)
