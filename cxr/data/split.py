"""The split step: fingerprint every image, group duplicates, and write the seeded valid/test/train manifest."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.core.io import write_json
from cxr.core.paths import ResolvedPaths
from cxr.core.sections import Base, Split, check_split_fits
from cxr.data.manifest import write_manifest
from cxr.data.rawindex import IMAGE_SUFFIXES, read_index, sheet_sources
from cxr.data.rawstore import SKIPPED_FILE, RawStore, archive_path
from cxr.ops.progress import Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitResult:
    """Where the manifest went and how many images each split got."""

    manifest: Path
    report: Path
    counts: dict[str, dict[str, int]]
    duplicate_groups: int


def list_images(raw: Path, base: Base) -> list[tuple[str, str]]:
    """(relative path, class folder) of every image in the canonical layout, sorted; errors name the folder."""
    if not raw.is_dir():
        raise FileNotFoundError(f"{raw}: raw data folder not found; run the download step first")
    items: list[tuple[str, str]] = []
    with RawStore(raw) as store:
        for folder in base.folders:
            if not store.has_folder(folder):
                raise FileNotFoundError(
                    f"{raw / folder}: class folder {folder!r} is missing from the raw data "
                    f"(neither {archive_path(raw, folder).name} nor a folder)"
                )
            files = store.list(folder, "images", IMAGE_SUFFIXES)
            if not files:
                where = archive_path(raw, folder) if store.is_packed(folder) else raw / folder / "images"
                raise ValueError(f"{where}: class folder {folder!r} holds no images")
            items.extend((rel, folder) for rel in files)
    return items


def _targets(sizes: dict[str, int], total: int, mode: str) -> dict[str, int]:
    """Per-class share of ``total``: proportional (largest remainder) or equal."""
    labels = sorted(sizes)
    if mode == "balanced":
        base_n, extra = divmod(total, len(labels))
        return {c: base_n + (i < extra) for i, c in enumerate(labels)}
    n = sum(sizes.values())
    exact = {c: total * sizes[c] / n for c in labels}
    out = {c: int(exact[c]) for c in labels}
    for c in sorted(labels, key=lambda c: (-(exact[c] - out[c]), c))[: total - sum(out.values())]:
        out[c] += 1
    return out


def assign_splits(labels: list[str], groups: list[int], cfg: Split, seed: int) -> list[str]:
    """Seeded stratified assignment of whole duplicate groups to valid, test and train."""
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    # A group belongs to the label of its first member; a group that mixes labels is reported by the caller.
    by_label: dict[str, list[int]] = defaultdict(list)
    for g in sorted(members):
        by_label[labels[members[g][0]]].append(g)
    sizes = Counter(labels)
    want = {"valid": _targets(sizes, cfg.valid, cfg.mode), "test": _targets(sizes, cfg.test, cfg.mode)}
    out = ["train"] * len(labels)
    rng = np.random.default_rng(seed)
    for label in sorted(by_label):
        order = [by_label[label][i] for i in rng.permutation(len(by_label[label]))]
        need = {s: want[s][label] for s in ("valid", "test")}
        for g in order:
            size = len(members[g])
            target = next((s for s in ("valid", "test") if 0 < size <= need[s]), None)
            if target is None:
                continue
            need[target] -= size
            for i in members[g]:
                out[i] = target
    return out


def split(base: Base, cfg: Split, paths: ResolvedPaths) -> SplitResult:
    """Write the manifest (path, folder, label, split, sha256, group, source) and the data report."""
    from cxr.data.duplicates import fingerprint_bytes, group_duplicates

    items = list_images(paths.raw, base)
    to_label = base.folder_to_label
    labels = [to_label[folder] for _, folder in items]
    per_label = Counter(labels)
    check_split_fits(cfg, dict(per_label))

    index = read_index(paths.raw)
    if index is not None and all(rel in index for rel, _ in items):
        # The download step decoded and hashed every image already.
        prints = [index[rel].fingerprint for rel, _ in items]
        sources = {Path(rel).stem.lower(): index[rel].source for rel, _ in items}
    else:
        log.info(
            "%s: %s; hashing every image",
            paths.raw,
            "no index" if index is None else "the index does not cover every image",
        )
        with RawStore(paths.raw) as store:

            def fingerprint(rel: str):
                try:
                    return fingerprint_bytes(store.read(rel))
                except Exception as err:  # the message names the file
                    raise ValueError(f"{store.describe(rel)}: cannot be read as an image ({err})") from None

            with (
                ThreadPoolExecutor(cfg.workers) as pool,
                Progress(len(items), "hashing images for duplicates", logger=log) as progress,
            ):
                prints = []
                for found in pool.map(fingerprint, [rel for rel, _ in items]):
                    prints.append(found)
                    progress.update()
        sources = sheet_sources(paths.raw, base.folders)
    shas = [p[0] for p in prints]
    groups = group_duplicates(shas, [p[1] for p in prints], cfg.near_duplicate_bits)
    splits = assign_splits(labels, groups, cfg, base.seed)

    rows = [
        {
            "path": rel,
            "folder": folder,
            "label": label,
            "split": split,
            "sha256": sha,
            "group": str(group),
            "source": sources.get(Path(rel).stem.lower(), ""),
        }
        for (rel, folder), label, split, sha, group in zip(items, labels, splits, shas, groups, strict=True)
    ]
    write_manifest(rows, paths.manifest)
    report = data_report(rows, prints)
    report["skipped"] = skipped_files(paths.raw)
    if report["skipped"]:
        log.warning(
            "%d files were left out of the raw data (download.policy 'skip'); listed in %s",
            len(report["skipped"]),
            paths.data_report,
        )
    write_json(paths.data_report, report, sort_keys=True)
    log.info("split %d images: %s", len(rows), report["counts"])
    return SplitResult(paths.manifest, paths.data_report, report["counts"], report["duplicates"]["groups"])


def skipped_files(raw: Path) -> list[dict[str, str]]:
    """The files the download step left out (path and reason); empty when none were."""
    import json

    path = raw / SKIPPED_FILE
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text())["skipped"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a list of skipped files ({err}); run the download step again") from None


def data_report(rows: list[dict[str, str]], prints: list[tuple]) -> dict:
    """Counts per class and split, sizes and modes, duplicate groups, label conflicts and sources."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"train": 0, "valid": 0, "test": 0})
    for r in rows:
        counts[r["label"]][r["split"]] += 1
    group_rows: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        group_rows[r["group"]].append(r)
    dup_groups = {g: rs for g, rs in group_rows.items() if len(rs) > 1}
    exact = Counter(r["sha256"] for r in rows)
    crossing = [g for g, rs in dup_groups.items() if len({r["split"] for r in rs}) > 1]
    conflicts = sorted(g for g, rs in dup_groups.items() if len({r["label"] for r in rs}) > 1)
    sizes = Counter(f"{w}x{h}" for _, _, (w, h), _ in prints)
    modes = Counter(mode for _, _, _, mode in prints)
    sources: dict[str, dict[str, int]] = defaultdict(dict)
    for r in rows:
        src = r["source"] or "unknown"
        sources[r["label"]][src] = sources[r["label"]].get(src, 0) + 1
    return {
        "images": len(rows),
        "counts": {k: dict(v) for k, v in sorted(counts.items())},
        "sizes": dict(sizes.most_common()),
        "modes": dict(modes.most_common()),
        "duplicates": {
            "groups": len(dup_groups),
            "images_in_groups": sum(len(rs) for rs in dup_groups.values()),
            "exact_copies": sum(n - 1 for n in exact.values() if n > 1),
            "groups_crossing_splits": len(crossing),
            "label_conflicts": [[r["path"] for r in dup_groups[g]] for g in conflicts],
        },
        "sources": {k: dict(sorted(v.items())) for k, v in sorted(sources.items())},
    }
