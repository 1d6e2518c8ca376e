"""The download step: synthetic, Kaggle or local data into the canonical ``data/raw``, versioned by DVC."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cxr.core.io import atomic_path
from cxr.core.paths import ResolvedPaths
from cxr.core.sections import Base, Download
from cxr.data.rawindex import IndexEntry, build_index, from_ingestion, index_path, write_index
from cxr.data.rawstore import SKIPPED_FILE, RawStore, pack, temp_dir
from cxr.ops.dvc import DvcError, RemoteError, has_remote, push, run_dvc, stage_status, track_raw
from cxr.ops.lineage import DATA_DVC, read_data_dvc

log = logging.getLogger(__name__)

# How data/raw is stored (cxr.data.rawstore, cxr.data.rawindex); in the fingerprint, so a change re-packs.
LAYOUT = "zip-per-class+index"


@dataclass(frozen=True)
class DownloadResult:
    """The raw data folder, its DVC version, and whether any work was done."""

    raw: Path
    data_version: str
    fingerprint: str
    skipped: bool
    counts: dict[str, int]


def local_path(cfg: Download, root: Path) -> Path:
    """The local source's folder or zip; relative paths are relative to the project root."""
    path = Path(cfg.local.path).expanduser()
    return path if path.is_absolute() else root / path


def source_description(base: Base, cfg: Download, root: Path) -> dict:
    """What defines the raw data: the source, its settings and the class folders (not the label mapping)."""
    desc: dict = {"source": cfg.source, "folders": list(base.folders), "layout": LAYOUT}
    if cfg.source == "synthetic":
        desc.update(per_class=cfg.synthetic.per_class, size=cfg.synthetic.size, seed=base.seed)
    elif cfg.source == "kaggle":
        desc.update(handle=cfg.kaggle.handle, version=cfg.kaggle.version, policy=cfg.policy, max_pixels=cfg.max_pixels)
    else:
        desc.update(path=str(local_path(cfg, root).resolve()), policy=cfg.policy, max_pixels=cfg.max_pixels)
    return desc


def _fingerprint(desc: dict) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


def _counts(raw: Path, folders) -> dict[str, int]:
    with RawStore(raw) as store:
        return {f: len(store.list(f, "images")) for f in folders if store.has_folder(f)}


def _recorded(root: Path, fingerprint: str) -> bool:
    """Whether ``data.dvc`` records these settings beside the data they produced (``meta.md5`` is ``outs[0].md5``)."""
    doc = read_data_dvc(root)
    meta = doc.get("meta") or {}
    if meta.get("fingerprint") != fingerprint:
        return False
    made, held = meta.get("md5"), (doc.get("outs") or [{}])[0].get("md5")
    if not made:
        log.warning(
            "%s names these settings but not the data they produced (it was written by an older version of the "
            "download step), so it cannot show that the recorded data is theirs: fetching the data again",
            DATA_DVC,
        )
        return False
    if made != held:
        log.warning(
            "%s records data %s, but these settings produced %s (a download was interrupted, or data/raw was "
            "committed by hand): fetching the data again",
            DATA_DVC,
            held,
            made,
        )
        return False
    return True


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _up_to_date(root: Path, raw: Path, fingerprint: str) -> bool:
    """The recorded data is what the params produce and the folder matches it (restored from the cache if needed)."""
    if not _recorded(root, fingerprint):
        return False
    try:
        if raw.exists() and not stage_status(root, DATA_DVC):
            return True
    except DvcError as err:
        log.info("%s cannot be compared with %s (%s): making the data again", raw, DATA_DVC, _first_line(err))
        return False
    # Missing or edited by hand: the recorded version comes back from the DVC cache, else from the remote.
    for how, args in (("the DVC cache", ["checkout", "--force", "--quiet"]), ("the DVC remote", ["pull", "--quiet"])):
        if how == "the DVC remote" and not has_remote(root):
            break
        try:
            run_dvc([*args, DATA_DVC], root)
        except DvcError as err:
            log.debug("`dvc %s %s` failed: %s", args[0], DATA_DVC, err)
            continue
        if raw.exists() and not stage_status(root, DATA_DVC):
            log.info("restored %s from %s", raw, how)
            return True
    doc = read_data_dvc(root)
    where = (
        "neither the DVC cache nor the DVC remote holds"
        if has_remote(root)
        else ("the DVC cache does not hold (and no DVC remote is configured)")
    )
    log.info(
        "%s records data version %s, which %s: a fresh clone, or a cleared cache; making it again from the params "
        "(download.source: %s)",
        DATA_DVC,
        (doc.get("outs") or [{}])[0].get("md5"),
        where,
        (doc.get("meta") or {}).get("source", "?"),
    )
    return False


def _fill(staging: Path, base: Base, cfg: Download, root: Path) -> dict[str, IndexEntry]:
    """Write the dataset into the empty folder ``staging`` (canonical v5 layout, loose files).

    Returns the index entries ingestion computed on the way (none for generated data).
    """
    if cfg.source == "synthetic":
        from cxr.data.synthetic import generate

        counts = cfg.synthetic.counts(base.folders)
        generate(staging, counts, size=cfg.synthetic.size, seed=base.seed, workers=cfg.synthetic.workers)
        return {}
    from cxr.data.ingest import ingest
    from cxr.data.kaggle import download_kaggle

    if cfg.source == "kaggle":
        src = download_kaggle(
            cfg.kaggle.handle, cfg.kaggle.version, Path(cfg.kaggle.cache_dir).expanduser(), cfg.kaggle.timeout_s
        )
        expected = None
        if cfg.kaggle.version == 5:
            from cxr.core.sections import FULL_COUNTS

            expected = {f: FULL_COUNTS[f] for f in base.folders}
    else:
        src = local_path(cfg, root)
        expected = None
    staging.rmdir()  # ingest builds its destination atomically and refuses to overwrite a half-made one
    report = ingest(
        src,
        staging,
        list(base.folders),
        policy=cfg.policy,
        expected_counts=expected,
        workers=cfg.workers,
        max_pixels=cfg.max_pixels,
    )
    if report.bad:
        log.warning("%d bad files skipped (policy 'skip'), e.g. %s", len(report.bad), report.bad[0])
        # Stored with the data (and so in its version), where the split step's data report picks it up.
        skipped = [{"path": b.path, "reason": b.reason} for b in report.bad]
        (staging / SKIPPED_FILE).write_text(json.dumps({"source": str(src), "skipped": skipped}, indent=2) + "\n")
    return from_ingestion(report.records)


def _leftovers(raw: Path, root: Path) -> list[Path]:
    """What interrupted downloads leave: their staging folders and replaced data beside ``raw`` (``.raw-*``,
    ``.raw-loose-*`` and the ingestion folders inside their names, ``.raw.old-*``), and a half-written record."""
    prefixes = (f".{raw.name}-", f".{raw.name}.old-")
    found = [p for p in raw.parent.iterdir() if p.name.startswith(prefixes)]
    return sorted(found + list(root.glob(f".{DATA_DVC}.*.tmp")))


def _clear_leftovers(raw: Path, root: Path) -> None:
    """Remove what interrupted downloads left; only called with the download lock held, so none is in use."""
    removed = []
    for path in _leftovers(raw, root):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
            removed.append(path.name)
        except OSError as err:  # in the way of nothing: the download goes on
            log.warning("cannot remove %s, left by an interrupted download: %s", path, err.strerror or err)
    if removed:
        log.info("removed what interrupted downloads left: %s", ", ".join(removed))


@contextlib.contextmanager
def _exclusive(raw: Path, root: Path) -> Iterator[None]:
    """Hold ``.<raw>.lock`` beside ``raw`` for the whole download, and clear what interrupted ones left.

    Two downloads into one folder would swap and record over each other; and only with the lock held is a
    staging folder known to be a leftover rather than the work of a download still running. An OS file lock:
    it goes with the process that held it, however that process ends.
    """
    from filelock import FileLock, Timeout

    raw.parent.mkdir(parents=True, exist_ok=True)
    owner = raw.parent / f".{raw.name}.pid"
    lock = FileLock(raw.parent / f".{raw.name}.lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        pid = owner.read_text().strip() if owner.is_file() else "unknown"
        raise RuntimeError(
            f"{raw}: another download (process {pid}) is writing the data here; let it finish or stop it, "
            "then run again"
        ) from None
    try:
        owner.write_text(f"{os.getpid()}\n")
        _clear_leftovers(raw, root)
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def _install(staging: Path, raw: Path, root: Path, meta: dict) -> str:
    """Swap the packed ``staging`` in as ``raw`` and record it in ``data.dvc``; return the data version.

    A failure (DVC refusing the commit, a full disk) puts ``raw`` and ``data.dvc`` back as they were. An
    interruption (Ctrl-C, a kill) is not undone here: :func:`track_raw` writes the record in an order that
    never claims settings for data they did not produce, and the next download clears the rest.
    """
    record = root / DATA_DVC
    before = record.read_bytes() if record.is_file() else None
    old = raw.with_name(f".{raw.name}.old-{uuid.uuid4().hex[:8]}") if raw.exists() else None
    if old is not None:
        os.rename(raw, old)
    try:
        os.rename(staging, raw)
    except BaseException:
        if old is not None:
            os.rename(old, raw)
        raise
    try:
        version = track_raw(root, raw.relative_to(root).as_posix(), meta)
    except Exception:
        _put_back(raw, old, record, before)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return version


def _put_back(raw: Path, old: Path | None, record: Path, before: bytes | None) -> None:
    """Undo :func:`_install` after a failure: the previous ``raw`` (or none) and the previous ``data.dvc``."""
    new = raw.with_name(f".{raw.name}-failed-{uuid.uuid4().hex[:8]}")
    if raw.exists():
        os.rename(raw, new)
    if old is not None:
        os.rename(old, raw)
    shutil.rmtree(new, ignore_errors=True)
    if before is None:
        record.unlink(missing_ok=True)
    else:
        with atomic_path(record) as tmp:
            tmp.write_bytes(before)
    log.info("put %s and %s back as they were before this download", raw, record)


def _push(root: Path, version: str) -> None:
    """Push the data version to the default DVC remote, when one is set.

    The version stays in ``data.dvc`` and the local cache when the push fails: the error names the remote,
    and the next download (even one with nothing new to fetch) pushes it.
    """
    if not has_remote(root):
        return
    try:
        push(root, (DATA_DVC,))
    except RemoteError as err:
        raise type(err)(
            f"{err}\n(data version {version} is kept in data.dvc and the local DVC cache; the next download pushes it)"
        ) from None
    log.info("pushed data version %s to the default DVC remote", version)


def download(base: Base, cfg: Download, paths: ResolvedPaths) -> DownloadResult:
    """Make ``data/raw`` match the params, then version it in ``data.dvc`` (and push when a remote is set)."""
    root, raw = paths.root, paths.raw
    desc = source_description(base, cfg, root)
    fingerprint = _fingerprint(desc)
    with _exclusive(raw, root):
        if _up_to_date(root, raw, fingerprint):
            log.info("data/raw is up to date with the params (%s); nothing to download", fingerprint)
            version = read_data_dvc(root)["outs"][0]["md5"]
            # A push that failed last time (the store was down) happens now; one already done transfers nothing.
            _push(root, version)
            return DownloadResult(raw, version, fingerprint, True, _counts(raw, base.folders))
        with temp_dir(raw.parent, f".{raw.name}-") as staging, temp_dir(raw.parent, f".{raw.name}-loose-") as loose:
            known = _fill(loose, base, cfg, root)
            # Ingestion has decoded and hashed every image: keep that beside the images, versioned with them.
            write_index(index_path(loose), build_index(loose, base.folders, known, cfg.workers))
            archives = pack(loose, staging)
            shutil.rmtree(loose)
            log.info("packed %d class folders into %s", len(archives), ", ".join(a.name for a in archives))
            version = _install(staging, raw, root, {**desc, "fingerprint": fingerprint})
        _push(root, version)
        counts = _counts(raw, base.folders)
    log.info("data/raw now holds %s (data version %s)", counts, version)
    return DownloadResult(raw, version, fingerprint, False, counts)
