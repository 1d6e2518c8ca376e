"""Ingest the COVID-19 Radiography Database (any known layout, folder or .zip) into one canonical layout."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cxr.data.extract import safe_extract
from cxr.data.imagecheck import MAX_PIXELS, Inspection, inspect_bytes
from cxr.data.ingestplan import Plan, Task, make_plan
from cxr.data.ingestreport import BadFile, ImageRecord, IngestReport
from cxr.data.layout import DataError, canonical_class, find_dataset_root, resolve_classes
from cxr.data.rawstore import replace_dir, temp_dir
from cxr.ops.progress import Progress

logger = logging.getLogger(__name__)

_MAX_LISTED_BAD = 20


@dataclass
class _Kept:
    """What validation kept, by class: images, masks and images per source archive; and one record per image."""

    counts: dict[str, int]
    masks: dict[str, int]
    sources: dict[str, dict[str, int]]
    records: list[ImageRecord]


def _check_paths(source: Path, dest: Path) -> None:
    """Refuse a destination that is, holds or sits inside the source."""
    s, d = source.resolve(), dest.resolve()
    if s == d or d.is_relative_to(s) or s.is_relative_to(d):
        raise DataError(f"destination {dest} overlaps the source {source}; choose a separate folder")
    if dest.exists() and not dest.is_dir():
        raise DataError(f"destination {dest} exists and is not a folder")


def _open_source(source: Path, dest: Path, wanted: list[str], stack: contextlib.ExitStack) -> tuple[Path, str, Path]:
    """Dataset root, layout and bounds (the folder, resolved: nothing outside it is read) of a folder, or of a
    .zip unpacked beside dest until the stack closes."""
    if source.is_file():
        if not zipfile.is_zipfile(source):
            raise DataError(f"source {source} is neither a folder nor a .zip archive")
        unzip = stack.enter_context(temp_dir(dest.parent, f".{dest.name}.unzip-"))
        folder = safe_extract(source, unzip / "src")
    else:
        folder = source
    root, layout = find_dataset_root(folder, wanted)
    return root, layout, Path(os.path.realpath(folder))


def _make_class_dirs(build: Path, wanted: list[str], tasks: list[Task]) -> None:
    """images/ for every class in the build, and masks/ for a class with masks to validate."""
    for cls in wanted:
        (build / cls / "images").mkdir(parents=True)
        if any(t.is_mask for t in tasks if t.cls == cls):
            (build / cls / "masks").mkdir(parents=True)


def _process(task: Task, build: Path, max_pixels: int = MAX_PIXELS) -> Inspection:
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


def _run_all(tasks: list[Task], fn: Callable[[Task], Inspection], workers: int) -> list[Inspection]:
    """Apply fn to every task, in order, on a thread pool when workers > 1; the progress is shown."""
    with Progress(len(tasks), "checking and copying files", unit="file", logger=logger) as progress:
        if workers <= 1 or len(tasks) < 2:
            out = []
            for t in tasks:
                out.append(fn(t))
                progress.update()
            return out
        chunk = max(1, min(256, len(tasks) // (workers * 4) or 1))
        chunks = [tasks[i : i + chunk] for i in range(0, len(tasks), chunk)]
        results: list[Inspection] = []
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest") as pool:
            for part in pool.map(lambda ts: [fn(t) for t in ts], chunks):
                results += part
                progress.update(len(part))
        return results


def _bad_message(source: Path, bad: list[BadFile]) -> str:
    """DataError text listing bad files (the first few) with reasons."""
    shown = "; ".join(f"{b.path}: {b.reason}" for b in bad[:_MAX_LISTED_BAD])
    more = f"; ... and {len(bad) - _MAX_LISTED_BAD} more" if len(bad) > _MAX_LISTED_BAD else ""
    return f"{len(bad)} bad file(s) in {source}: {shown}{more}. Fix them or use policy 'skip' to leave them out."


def _refused(source: Path, plan: Plan, results: list[Inspection], policy: str) -> list[BadFile]:
    """The files refused, by validation or before it: one DataError listing them under policy 'fail', else each
    logged."""
    bad = [BadFile(t.rel, r.reason) for t, r in zip(plan.tasks, results, strict=True) if r.reason is not None]
    bad += plan.refused
    if bad and policy == "fail":
        raise DataError(_bad_message(source, bad))
    for b in bad:
        logger.warning("skipping bad file %s: %s", b.path, b.reason)
    return bad


def _kept_masks(tasks: list[Task], results: list[Inspection], build: Path) -> dict[tuple[str, str], str]:
    """(class, image name) -> staged mask, for valid masks of valid images; other staged masks are removed."""
    pairs = list(zip(tasks, results, strict=True))
    good_images = {(t.cls, t.src.name) for t, r in pairs if not t.is_mask and r.reason is None}
    mask_of: dict[tuple[str, str], str] = {}
    for t, r in pairs:
        if t.is_mask and r.reason is None:
            if (t.cls, t.src.name) in good_images:
                mask_of[(t.cls, t.src.name)] = t.out
            else:  # image refused under policy skip: drop its mask too
                (build / t.out).unlink(missing_ok=True)
    return mask_of


def _keep(plan: Plan, results: list[Inspection], build: Path, wanted: list[str]) -> _Kept:
    """Record every valid image (with its mask and source archive) and count them by class."""
    mask_of = _kept_masks(plan.tasks, results, build)
    kept = _Kept({cls: 0 for cls in wanted}, {cls: 0 for cls in wanted}, {cls: {} for cls in wanted}, [])
    for cls, _ in mask_of:
        kept.masks[cls] += 1
    for t, r in zip(plan.tasks, results, strict=True):
        if t.is_mask or r.reason is not None:
            continue
        src_name = plan.metadata.get(t.cls, {}).get(t.src.stem.lower(), "unknown")
        kept.counts[t.cls] += 1
        kept.sources[t.cls][src_name] = kept.sources[t.cls].get(src_name, 0) + 1
        kept.records.append(
            ImageRecord(
                t.cls,
                t.out,
                t.rel,
                r.sha256,
                r.dhash,
                r.width,
                r.height,
                r.mode,
                r.format,
                r.nbytes,
                src_name,
                mask_of.get((t.cls, t.src.name)),
            )
        )
    return kept


def _complete_build(build: Path, plan: Plan, kept: _Kept, n_bad: int) -> None:
    """Refuse a class left without a valid image, drop empty masks/ folders, and copy the metadata sheets in."""
    for cls, cls_dir in plan.cls_dirs.items():
        if kept.counts[cls] == 0:
            raise DataError(f"class {cls!r}: no valid images in {cls_dir} (all {n_bad} refused)")
        if kept.masks[cls] == 0 and (build / cls / "masks").is_dir():
            (build / cls / "masks").rmdir()
    for cls, sheet in plan.sheets.items():
        shutil.copyfile(sheet, build / f"{cls}.metadata.xlsx")


def _find_duplicates(records: list[ImageRecord]) -> tuple[list[list[str]], list[list[str]]]:
    """Groups of ingested paths with identical bytes, and those of them that span classes."""
    by_hash: dict[str, list[ImageRecord]] = {}
    for r in records:
        by_hash.setdefault(r.sha256, []).append(r)
    dups = [[r.path for r in g] for g in by_hash.values() if len(g) > 1]
    conflicts = [[r.path for r in g] for g in by_hash.values() if len({r.cls for r in g}) > 1]
    return dups, conflicts


def _examples(groups: list[list[str]]) -> str:
    """The first three groups of paths, for a log line."""
    return "; ".join(", ".join(g) for g in groups[:3])


def _check_duplicates(records: list[ImageRecord]) -> tuple[list[list[str]], list[list[str]]]:
    """Exact-duplicate groups and label conflicts (kept, not refused), each kind logged with examples."""
    dups, conflicts = _find_duplicates(records)
    if dups:
        logger.warning(
            "%d groups of exact duplicate files (identical bytes, kept; see report.duplicates), e.g. %s",
            len(dups),
            _examples(dups),
        )
    if conflicts:
        logger.warning(
            "%d identical images in several classes (label conflicts; see report.conflicts), e.g. %s",
            len(conflicts),
            _examples(conflicts),
        )
    return dups, conflicts


def _count_mismatch(counts: dict[str, int], expected: Mapping[str, int] | None) -> dict[str, dict[str, int]]:
    """Classes whose image count is not the expected one (expected may name a class by an alias), each logged."""
    mismatch: dict[str, dict[str, int]] = {}
    for name, n in (expected or {}).items():
        cls = canonical_class(name) or name
        if cls in counts and counts[cls] != int(n):
            mismatch[cls] = {"expected": int(n), "found": counts[cls]}
            logger.warning("class %r: expected %d images, found %d", cls, int(n), counts[cls])
    return mismatch


def ingest(
    source: Path,
    dest: Path,
    classes: Sequence[str],
    policy: str = "fail",
    expected_counts: Mapping[str, int] | None = None,
    workers: int = 1,
    max_pixels: int = MAX_PIXELS,
) -> IngestReport:
    """Ingest a folder or .zip in any known layout into canonical dest/<CLASS>/images (+ masks, sheets), atomically."""
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

    # Everything is staged in a build folder beside dest, which replaces dest only once it is complete.
    with contextlib.ExitStack() as stack:
        root, layout, bounds = _open_source(source, dest, wanted, stack)
        plan = make_plan(root, wanted, policy, bounds, warnings)
        build = stack.enter_context(temp_dir(dest.parent, f".{dest.name}.build-"))
        _make_class_dirs(build, wanted, plan.tasks)
        logger.info("ingesting %d files (%s layout) from %s with %d worker(s)", len(plan.tasks), layout, root, workers)
        results = _run_all(plan.tasks, lambda t: _process(t, build, max_pixels), max(1, workers))
        bad = _refused(source, plan, results, policy) + plan.bad_sheets
        kept = _keep(plan, results, build, wanted)
        _complete_build(build, plan, kept, len(bad))
        dups, conflicts = _check_duplicates(kept.records)
        mismatch = _count_mismatch(kept.counts, expected_counts)
        replace_dir(build, dest)

    report = IngestReport(
        dest=dest,
        layout=layout,
        counts=kept.counts,
        masks=kept.masks,
        bad=bad,
        sources=kept.sources,
        source=str(source),
        duplicates=dups,
        conflicts=conflicts,
        count_mismatch=mismatch,
        warnings=warnings,
        records=kept.records,
        elapsed_s=time.perf_counter() - t0,
    )
    logger.info(
        "ingested %d images into %s in %.2fs (%s); %d bad, %d duplicate groups",
        sum(kept.counts.values()),
        dest,
        report.elapsed_s,
        kept.counts,
        len(bad),
        len(dups),
    )
    return report
