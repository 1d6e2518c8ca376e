"""Ingest the COVID-19 Radiography Database (any known layout, folder or .zip) into one canonical layout."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from cxr.data.extract import safe_extract
from cxr.data.imagecheck import MAX_PIXELS, Inspection, inspect_bytes
from cxr.data.layout import (
    IMAGE_SUFFIXES,
    DataError,
    canonical_class,
    class_dirs,
    find_dataset_root,
    folder_class,
    folder_entries,
    resolve_classes,
    visible_dirs,
)
from cxr.data.metadata import metadata_files, read_metadata
from cxr.data.rawstore import replace_dir, temp_dir

logger = logging.getLogger(__name__)

_MAX_LISTED_BAD = 20


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
    for e in folder_entries(folder):
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


def _process(task: _Task, build: Path, max_pixels: int = MAX_PIXELS) -> Inspection:
    """Read a file once, validate and hash it from those bytes, and stage the bytes when valid."""
    try:
        data = task.src.read_bytes()
    except OSError as exc:
        return Inspection(f"unreadable ({exc.strerror or exc})")
    result = inspect_bytes(data, expect_mask=task.is_mask, fingerprint=not task.is_mask, max_pixels=max_pixels)
    if result.reason is None:
        with open(build / task.out, "xb") as fh:
            fh.write(data)
    return result


def _run_all(tasks: list[_Task], fn: Callable[[_Task], Inspection], workers: int) -> list[Inspection]:
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
    wanted = resolve_classes(classes)
    _check_paths(source, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    warnings: list[str] = []

    with contextlib.ExitStack() as stack:
        if source.is_file():
            if not zipfile.is_zipfile(source):
                raise DataError(f"source {source} is neither a folder nor a .zip archive")
            unzip = stack.enter_context(temp_dir(dest.parent, f".{dest.name}.unzip-"))
            folder = safe_extract(source, unzip / "src")
        else:
            folder = source
        root, layout = find_dataset_root(folder, wanted)
        cls_folders = class_dirs(root, wanted)
        for d in visible_dirs(root):
            cls = folder_class(d.name, wanted)
            if cls is not None and cls not in wanted:
                logger.info("ignoring folder %s (class %r not requested)", d, cls)

        tasks: list[_Task] = []
        metadata: dict[str, dict[str, str]] = {}
        sheets: dict[str, Path] = {}
        bad_sheets: list[BadFile] = []
        for cls in wanted:
            cls_dir = cls_folders[cls][0]
            tasks += _plan_class(root, cls, cls_dir, warnings)
            for sheet in metadata_files(root, cls_dir, cls, wanted)[:1]:
                try:
                    metadata[cls] = {k.lower(): v for k, v in read_metadata(sheet).items()}
                    sheets[cls] = sheet
                except DataError as exc:
                    # A sheet is input like an image: it names each image's source archive.
                    if policy == "fail":
                        raise DataError(f"{exc}. Fix it, remove it, or use policy 'skip' to leave it out.") from None
                    bad_sheets.append(BadFile(sheet.relative_to(root).as_posix(), str(exc).removeprefix(f"{sheet}: ")))
                    logger.warning("skipping metadata sheet %s for class %r: %s", sheet, cls, exc)

        build = stack.enter_context(temp_dir(dest.parent, f".{dest.name}.build-"))
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
                raise DataError(f"class {cls!r}: no valid images in {cls_folders[cls][0]} (all {len(bad)} refused)")
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

        replace_dir(build, dest)

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

