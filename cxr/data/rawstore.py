"""``data/raw`` on disk: one uncompressed zip per class folder, members at their canonical paths.

DVC hashes, stats and checks every file of a tracked folder on each ``dvc status`` and ``dvc repro``;
at 21,165 images with masks (about 42k files) that alone costs seconds per command. So the download
step packs each class folder into ``<FOLDER>.zip`` (``ZIP_STORED``: the original bytes, no
re-encoding, no compression) and DVC tracks a handful of files. Members keep their canonical
relative paths (``COVID/images/COVID-1.png``): unzipping every archive into one folder gives the
loose canonical layout back, and manifest paths are the same in both forms. The archives are
deterministic (sorted members, fixed timestamps and permissions), so the same images always give
the same data version.

``RawStore`` reads either form: a class folder's archive when it exists, else the loose folder
(``data/raw/<FOLDER>/...``), so data unpacked by hand or made by older versions still works.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from cxr.core.io import atomic_path

ARCHIVE_SUFFIX = ".zip"
#: The files the download step left out under ``download.policy: skip`` (path and reason), beside the archives.
SKIPPED_FILE = "skipped.json"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can record: no build time leaks into the bytes


def fresh_dir(parent: Path, prefix: str) -> Path:
    """A new empty folder with a unique name in ``parent``, with the permissions the user's umask gives.

    ``tempfile.mkdtemp`` makes its folder ``0700``; a folder later renamed into place as ``data/raw``
    must be as readable as any other the user makes (teammates on a shared machine read it).
    """
    while True:
        path = Path(parent) / f"{prefix}{uuid.uuid4().hex[:12]}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


@contextlib.contextmanager
def temp_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A :func:`fresh_dir` in parent (it may become the destination), removed on exit if still there."""
    path = fresh_dir(parent, prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def replace_dir(build: Path, dest: Path) -> None:
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


def archive_path(root: Path, folder: str) -> Path:
    """Where the archive of class folder ``folder`` lives under ``root``."""
    return Path(root) / f"{folder}{ARCHIVE_SUFFIX}"


def pack(loose: Path, dest: Path) -> list[Path]:
    """Pack every class folder of the loose layout ``loose`` into ``dest/<FOLDER>.zip``; copy other top-level files.

    ``dest`` must exist. Each archive is written under a temporary name and renamed when complete.
    Returns the archives written.
    """
    loose, dest = Path(loose), Path(dest)
    written = []
    for entry in sorted(loose.iterdir()):
        if entry.is_dir():
            target = archive_path(dest, entry.name)
            files = sorted(p for p in entry.rglob("*") if p.is_file())
            with (
                atomic_path(target) as tmp,
                zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf,
            ):
                for f in files:
                    info = zipfile.ZipInfo(f.relative_to(loose).as_posix(), date_time=ZIP_DATE)
                    info.external_attr = 0o644 << 16
                    info.create_system = 3  # unix, whatever the platform: same bytes everywhere
                    zf.writestr(info, f.read_bytes(), compress_type=zipfile.ZIP_STORED)
            written.append(target)
        elif entry.is_file():
            shutil.copyfile(entry, dest / entry.name)
    return written


class RawStore:
    """Read access to the raw data folder, packed (``<FOLDER>.zip``) or loose (``<FOLDER>/``).

    Paths are the canonical relative ones (``<FOLDER>/images/<name>``), as in the split manifest.
    Thread-safe for reading; picklable (open archives are reopened in the receiving process).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._zips: dict[str, zipfile.ZipFile] = {}
        self._names: dict[str, set[str]] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        return {"root": self.root}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root"])

    def __repr__(self) -> str:
        return f"RawStore({str(self.root)!r})"

    def close(self) -> None:
        with self._lock:
            for zf in self._zips.values():
                zf.close()
            self._zips.clear()
            self._names.clear()

    def __enter__(self) -> RawStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -------------------------------------------------------------------------------- archives

    def is_packed(self, folder: str) -> bool:
        """Whether class folder ``folder`` is stored as an archive (an archive already open: no stat per read)."""
        return folder in self._zips or archive_path(self.root, folder).is_file()

    def _zip(self, folder: str) -> zipfile.ZipFile:
        with self._lock:
            if self._pid != os.getpid():  # forked: a shared file offset would interleave reads
                self._zips.clear()
                self._names.clear()
                self._pid = os.getpid()
            zf = self._zips.get(folder)
            if zf is None:
                path = archive_path(self.root, folder)
                try:
                    zf = zipfile.ZipFile(path)
                except zipfile.BadZipFile as err:
                    raise ValueError(
                        f"{path}: not a readable zip archive ({err}); restore it with "
                        "'dvc checkout data.dvc' or run the download step again"
                    ) from None
                self._zips[folder] = zf
                self._names[folder] = set(zf.namelist())
            return zf

    @staticmethod
    def _folder_of(rel: str) -> str:
        parts = PurePosixPath(rel).parts
        if len(parts) < 2 or ".." in parts or rel.startswith("/"):
            raise ValueError(f"{rel!r}: not a path inside a class folder (<FOLDER>/.../<file>)")
        return parts[0]

    # -------------------------------------------------------------------------------- reading

    def describe(self, rel: str) -> str:
        """Where ``rel`` is read from, for messages: ``data/raw/COVID.zip:COVID/images/x.png`` or the file path."""
        folder = self._folder_of(rel)
        if self.is_packed(folder):
            return f"{archive_path(self.root, folder)}:{rel}"
        return str(self.root / rel)

    def exists(self, rel: str) -> bool:
        folder = self._folder_of(rel)
        if self.is_packed(folder):
            self._zip(folder)
            return rel in self._names[folder]
        return (self.root / rel).is_file()

    def read(self, rel: str) -> bytes:
        """The bytes of ``rel``; FileNotFoundError naming the archive or file when it is not there."""
        folder = self._folder_of(rel)
        if self.is_packed(folder):
            zf = self._zip(folder)
            if rel not in self._names[folder]:
                raise FileNotFoundError(f"{self.describe(rel)}: no such member")
            return zf.read(rel)
        try:
            return (self.root / rel).read_bytes()
        except OSError as err:
            raise FileNotFoundError(f"{self.root / rel}: cannot be read ({err.strerror or err})") from None

    def has_folder(self, folder: str) -> bool:
        return self.is_packed(folder) or (self.root / folder).is_dir()

    def list(self, folder: str, sub: str, suffixes: tuple[str, ...] | None = None) -> list[str]:
        """Sorted relative paths of the files directly in ``<folder>/<sub>/`` (optionally by suffix)."""
        prefix = f"{folder}/{sub}/"
        if self.is_packed(folder):
            self._zip(folder)
            names = [n for n in self._names[folder] if n.startswith(prefix) and "/" not in n[len(prefix) :]]
        else:
            d = self.root / folder / sub
            names = [f"{prefix}{p.name}" for p in d.iterdir() if p.is_file()] if d.is_dir() else []
        if suffixes is not None:
            names = [n for n in names if PurePosixPath(n).suffix.lower() in suffixes]
        return sorted(names)

    def model_input(self, rel: str) -> str | bytes:
        """What to hand a served model for ``rel``: the file's path when it is loose, else its bytes."""
        folder = self._folder_of(rel)
        return self.read(rel) if self.is_packed(folder) else str(self.root / rel)
