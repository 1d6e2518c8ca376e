"""Safe zip extraction: every member checked (path, type, size, ratio) before anything is written."""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import zipfile
from pathlib import Path

from cxr.data.layout import IGNORED_DIRS, DataError
from cxr.data.rawstore import fresh_dir

logger = logging.getLogger(__name__)

_RATIO_MIN_BYTES = 1 << 20


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
        if not parts or parts[0].lower() in IGNORED_DIRS:
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
                                    f"zip member {info.filename!r}: extracted size passes the limit of "
                                    f"{max_total_bytes} bytes"
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
