"""What ingestion reads from a dataset root, class by class: the images and masks to validate, the metadata sheet,
and the files it refuses before reading a byte, each with the reason.

Refused before reading: a file name that is not UTF-8 (it could not be stored, indexed or reported as it is), a file
or folder that links out of the source (the data would depend on what lies elsewhere on the machine), and an image
in a folder that is not read (in a subfolder of ``images/`` or ``masks/``, or beside them in a v5 class folder).
Like a file that does not decode, each stops the run under ``download.policy: fail`` and is left out, and listed
with its reason, under ``skip``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from cxr.data.ingestreport import BadFile
from cxr.data.layout import (
    IGNORED_DIRS,
    IMAGE_SUFFIXES,
    DataError,
    class_dirs,
    folder_class,
    folder_entries,
    visible_dirs,
)
from cxr.data.metadata import metadata_files, read_metadata

logger = logging.getLogger(__name__)

NOT_UTF8 = "file name is not valid UTF-8 (the bytes that are not are shown as \\xNN); rename it"
# Folders of a class folder that are not image input: the synthetic data's lesion masks, which ingestion does not carry.
_NOT_INPUT = {"lesions"}


@dataclass(frozen=True)
class Task:
    """One file to validate (and stage): an image or a mask."""

    cls: str
    src: Path
    rel: str
    out: str
    is_mask: bool


@dataclass
class Plan:
    """The files to validate, each class's folder, its metadata sheet (read, or refused under 'skip'), and the
    files refused before reading."""

    tasks: list[Task] = field(default_factory=list)
    cls_dirs: dict[str, Path] = field(default_factory=dict)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)  # class -> lower-case file stem -> source
    sheets: dict[str, Path] = field(default_factory=dict)
    bad_sheets: list[BadFile] = field(default_factory=list)
    refused: list[BadFile] = field(default_factory=list)


@dataclass
class _Listing:
    """One folder's image files, the names of its other entries, and the image files refused before reading."""

    files: list[Path] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    refused: list[tuple[Path, str]] = field(default_factory=list)


def escaped(path: Path | str) -> str:
    """A path as text that can be stored and printed: bytes that are not UTF-8 shown as ``\\xNN``."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def shown(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as reports name it: ``/``-separated, bytes that are not UTF-8 escaped."""
    return escaped(path.relative_to(root).as_posix())


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, carried as surrogates (os.fsdecode)
        return False
    return True


def link_out(path: Path, boundary: Path) -> str | None:
    """Why ``path`` is refused as a link out of the source (``boundary``, resolved), or None when it stays inside."""
    real = Path(os.path.realpath(path))
    if real.is_relative_to(boundary):
        return None
    if os.path.islink(path):
        return f"symbolic link to {escaped(real)}, outside the source {escaped(boundary)}"
    return f"reached through a symbolic link: it is {escaped(real)}, outside the source {escaped(boundary)}"


def _list_files(folder: Path, boundary: Path) -> _Listing:
    """A folder's image files (sorted), the names of its other entries, and the image files refused by name or link."""
    out = _Listing()
    folder_out = link_out(folder, boundary) is not None  # every file in it is then outside too
    for e in folder_entries(folder):
        if e.name.startswith(".") or not e.name.lower().endswith(IMAGE_SUFFIXES):
            out.ignored.append(e.name)
            continue
        path = Path(e.path)
        reason = NOT_UTF8 if not _is_utf8(e.name) else None
        if reason is None and (folder_out or e.is_symlink()):
            reason = link_out(path, boundary)
        if reason is not None:
            out.refused.append((path, reason))
        elif e.is_file():
            out.files.append(path)
        else:
            out.ignored.append(e.name)
    out.files.sort()
    out.ignored.sort()
    out.refused.sort()
    return out


def _unread(root: Path, cls_dir: Path, img_dir: Path, mask_dir: Path, boundary: Path) -> list[BadFile]:
    """Image files under a class folder that are not read, each with the reason: in a subfolder of the image or
    mask folder, or (v5) beside them; a folder that links out of the source is named and not followed."""
    out: list[BadFile] = []

    def why(folder: Path) -> str:
        home, kind = (mask_dir, "masks") if folder.is_relative_to(mask_dir) else (img_dir, "images")
        return (
            f"in {shown(folder, root)}/, which is not read: {kind} are read only directly in {shown(home, root)}/; "
            "move it there or out of the source"
        )

    def unlisted(err: OSError) -> None:
        out.append(BadFile(shown(Path(err.filename), root), f"folder cannot be listed ({err.strerror or err})"))

    seen = {os.path.realpath(cls_dir)}  # links are followed inside the source, each folder walked once
    for dirpath, dirnames, filenames in os.walk(cls_dir, onerror=unlisted, followlinks=True):
        here = Path(dirpath)
        walk = []
        for name in sorted(dirnames):
            sub = here / name
            if name.startswith(".") or name.lower() in IGNORED_DIRS or (here == cls_dir and name in _NOT_INPUT):
                continue
            outside = None if sub in (img_dir, mask_dir) else link_out(sub, boundary)
            if outside is not None:
                out.append(BadFile(shown(sub, root), outside))
            elif (real := os.path.realpath(sub)) not in seen:
                seen.add(real)
                walk.append(name)
        dirnames[:] = walk
        if here not in (img_dir, mask_dir):  # those folders' own files are listed by _list_files
            images = sorted(f for f in filenames if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES))
            out += [BadFile(shown(here / f, root), why(here)) for f in images]
    return out


def _warn(warnings: list[str], msg: str) -> None:
    """Log a warning and keep it for the report."""
    logger.warning(msg)
    warnings.append(msg)


def _plan_class(
    root: Path, cls: str, cls_dir: Path, boundary: Path, warnings: list[str]
) -> tuple[list[Task], list[BadFile]]:
    """Image and mask tasks of one class folder (v5 images/ + masks/, or flat), and the files refused before reading."""
    img_dir = cls_dir / "images" if (cls_dir / "images").is_dir() else cls_dir
    listing = _list_files(img_dir, boundary)
    ignored = [n for n in listing.ignored if not (img_dir == cls_dir and n in ("images", "masks"))]
    if ignored:
        _warn(warnings, f"class {cls!r}: ignored {len(ignored)} non-image entries in {img_dir} (e.g. {ignored[0]!r})")
    refused = [BadFile(shown(p, root), why) for p, why in listing.refused]
    if not listing.files and not refused:
        raise DataError(f"class {cls!r}: folder {img_dir} has no images ({', '.join(IMAGE_SUFFIXES)})")
    names = {p.name for p in listing.files}
    tasks = [Task(cls, p, p.relative_to(root).as_posix(), f"{cls}/images/{p.name}", False) for p in listing.files]
    mask_dir = cls_dir / "masks"
    if mask_dir.is_dir():
        masks = _list_files(mask_dir, boundary)
        refused += [BadFile(shown(p, root), why) for p, why in masks.refused]
        orphans = [m.name for m in masks.files if m.name not in names]
        if orphans:
            _warn(
                warnings,
                f"class {cls!r}: {len(orphans)} masks without an image in {mask_dir} (e.g. {orphans[0]!r}), ignored",
            )
        tasks += [
            Task(cls, m, m.relative_to(root).as_posix(), f"{cls}/masks/{m.name}", True)
            for m in masks.files
            if m.name in names
        ]
    return tasks, refused + _unread(root, cls_dir, img_dir, mask_dir, boundary)


def _read_sheet(plan: Plan, root: Path, cls: str, sheet: Path, policy: str, boundary: Path) -> None:
    """Read a class's metadata sheet into the plan; a bad one stops the run, or under 'skip' is listed as bad."""
    try:
        outside = link_out(sheet, boundary)
        if outside is not None:
            raise DataError(f"{escaped(sheet)}: {outside}")
        plan.metadata[cls] = {k.lower(): v for k, v in read_metadata(sheet).items()}
        plan.sheets[cls] = sheet
    except DataError as exc:
        # A sheet is input like an image: it names each image's source archive.
        if policy == "fail":
            raise DataError(f"{exc}. Fix it, remove it, or use policy 'skip' to leave it out.") from None
        reason = str(exc).removeprefix(f"{sheet}: ").removeprefix(f"{escaped(sheet)}: ")
        plan.bad_sheets.append(BadFile(shown(sheet, root), reason))
        logger.warning("skipping metadata sheet %s for class %r: %s", escaped(sheet), cls, exc)


def make_plan(root: Path, wanted: list[str], policy: str, boundary: Path, warnings: list[str]) -> Plan:
    """Class by class: the images and masks to validate, the metadata sheet, and the files refused before reading
    (``boundary``: the source, resolved; nothing outside it is read). Unrequested classes are logged."""
    cls_folders = class_dirs(root, wanted)
    for d in visible_dirs(root):
        cls = folder_class(d.name, wanted)
        if cls is not None and cls not in wanted:
            logger.info("ignoring folder %s (class %r not requested)", d, cls)
    plan = Plan()
    for cls in wanted:
        cls_dir = cls_folders[cls][0]
        plan.cls_dirs[cls] = cls_dir
        tasks, refused = _plan_class(root, cls, cls_dir, boundary, warnings)
        plan.tasks += tasks
        plan.refused += refused
        for sheet in metadata_files(root, cls_dir, cls, wanted)[:1]:
            _read_sheet(plan, root, cls, sheet, policy, boundary)
    return plan
