"""Class names and dataset layouts: which folder holds the class folders, and in which layout."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

CLASS_ALIASES: dict[str, str] = {
    "covid": "COVID",
    "covid19": "COVID",
    "normal": "Normal",
    "lungopacity": "Lung_Opacity",
    "viralpneumonia": "Viral Pneumonia",
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_ROOT_DEPTH = 3
# Folders that archivers add and that are never data (macOS resource forks in zips).
IGNORED_DIRS = {"__macosx"}


class DataError(ValueError):
    """Bad input data; message names the file or folder."""


def normalise_name(name: str) -> str:
    """Lower-case a folder name and drop spaces, underscores and hyphens."""
    return re.sub(r"[\s_\-]+", "", name).lower()


def canonical_class(name: str) -> str | None:
    """Canonical class for a folder or class name, or None when it is not a known alias."""
    return CLASS_ALIASES.get(normalise_name(name))


def resolve_classes(classes: Sequence[str]) -> list[str]:
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


def folder_class(name: str, wanted: Sequence[str]) -> str | None:
    """Class a folder name stands for: a known alias, or a requested class with no alias."""
    canon = canonical_class(name)
    if canon is not None:
        return canon
    norm = normalise_name(name)
    for w in wanted:
        if normalise_name(w) == norm:
            return w
    return None


def folder_entries(folder: Path) -> list[os.DirEntry]:
    """The entries of folder, in no order; a folder that cannot be listed is a DataError naming it."""
    try:
        return list(os.scandir(folder))
    except OSError as exc:
        raise DataError(f"cannot list folder {folder}: {exc}") from exc


def visible_dirs(folder: Path) -> list[Path]:
    """Sub-folders of folder, sorted, without hidden and __MACOSX folders."""
    out = []
    for e in folder_entries(folder):
        if e.name.startswith(".") or e.name.lower() in IGNORED_DIRS:
            continue
        with contextlib.suppress(OSError):
            if e.is_dir():
                out.append(Path(e.path))
    return sorted(out)


def class_dirs(folder: Path, wanted: Sequence[str]) -> dict[str, list[Path]]:
    """Class -> sub-folders of folder whose names map to that class."""
    found: dict[str, list[Path]] = {}
    for d in visible_dirs(folder):
        cls = folder_class(d.name, wanted)
        if cls is not None:
            found.setdefault(cls, []).append(d)
    return found


def find_dataset_root(path: Path, classes: Sequence[str]) -> tuple[Path, str]:
    """Locate the folder holding the class folders; return it and the layout name ('v5' or 'flat')."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"dataset folder {path} does not exist or is not a folder")
    wanted = resolve_classes(classes)
    candidates: list[tuple[int, int, int, Path, dict[str, list[Path]]]] = []
    frontier = [path]
    for depth in range(MAX_ROOT_DEPTH + 1):
        next_frontier: list[Path] = []
        for folder in frontier:
            dirs = class_dirs(folder, wanted)
            if dirs:
                n_wanted = sum(1 for c in wanted if c in dirs)
                candidates.append((-n_wanted, -len(dirs), depth, folder, dirs))
            elif depth < MAX_ROOT_DEPTH:
                next_frontier.extend(visible_dirs(folder))
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
            raise DataError(f"class {cls!r} has several folders in {root}: {', '.join(d.name for d in dirs[cls])}")
    layout = "v5" if any((dirs[c][0] / "images").is_dir() for c in wanted) else "flat"
    return root, layout
