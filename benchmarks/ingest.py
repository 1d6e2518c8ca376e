"""Ingestion (validate + hash + stage) vs a naive PIL loop; DVC tracking and a no-op ``dvc status`` + ``dvc repro``.

At full size: the 21,165-image synthetic dataset (299 px, with masks: about 42k files), ingested by
``cxr.data.ingest.ingest`` with one worker per core into a loose folder, then stored and versioned the
project's way (``cxr.data.rawstore.pack``: one uncompressed zip per class folder in ``data/raw`` of a fresh
git + DVC repository, then ``cxr.ops.dvc.track_raw``); a stage that depends on ``data/raw`` is
reproduced once and the no-op ``dvc status`` and ``dvc repro`` are timed (and ``dvc status`` profiled
when the no-op misses its goal).
"""

from __future__ import annotations

import cProfile
import hashlib
import io
import os
import pstats
import shutil
import time
from pathlib import Path

from benchmarks.common import Figure, Outcome, Row, git_dvc_repo, synthetic_dataset, timer

CLASSES: tuple[str, ...] = ("COVID", "Normal", "Lung_Opacity", "Viral Pneumonia")
NAIVE_IMAGES = {"full": 3000, "tiny": 24}  # the naive loop runs on an even subset (images and their masks)
NOOP_GOAL_S = 3.0

DVC_YAML = """stages:
  count:
    cmd: >-
      python -c "import pathlib; n = sum(1 for _ in pathlib.Path('data/raw').iterdir());
      pathlib.Path('count.txt').write_text(str(n))"
    deps:
      - data/raw
    outs:
      - count.txt
"""


def _pairs(src: Path) -> list[tuple[Path, Path | None]]:
    """(image, mask) paths of the dataset, in a fixed order."""
    out = []
    for cls in CLASSES:
        for img in sorted((src / cls / "images").glob("*.png")):
            mask = src / cls / "masks" / img.name
            out.append((img, mask if mask.is_file() else None))
    return out


def naive_loop(files: list[Path]) -> None:
    """The baseline: PIL open + full decode, then hashlib over the file, one file at a time."""
    from PIL import Image

    for p in files:
        with Image.open(p) as im:
            im.load()
        hashlib.sha256(p.read_bytes()).hexdigest()


def _dvc(args: list[str], root: Path) -> tuple[float, str]:
    """Seconds and output of ``python -m dvc ARGS`` in ``root`` (raises on failure)."""
    from cxr.ops.dvc import run_dvc

    t0 = time.perf_counter()
    out = run_dvc(args, root)
    return time.perf_counter() - t0, out


def profile_dvc_status(root: Path, out_file: Path, top: int = 15) -> list[str]:
    """Profile ``dvc status`` in-process in ``root``; write the cumulative table to ``out_file``; the top lines."""
    from dvc.cli import main as dvc_main

    cwd = os.getcwd()
    prof = cProfile.Profile()
    try:
        os.chdir(root)
        prof.enable()
        dvc_main(["status", "--quiet"])
        prof.disable()
    finally:
        os.chdir(cwd)
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).sort_stats("cumulative")
    stats.print_stats(60)
    out_file.write_text(buf.getvalue())
    rows = []
    for (fname, line, func), (_cc, _nc, _tt, ct, _callers) in sorted(
        stats.stats.items(), key=lambda kv: kv[1][3], reverse=True
    ):
        if "site-packages" not in fname and "dvc" not in fname:
            continue
        short = fname.split("site-packages/")[-1]
        rows.append(f"{ct:.2f}s {short}:{line}({func})")
        if len(rows) >= top:
            break
    return rows


def split_both_ways(root: Path, workers: int, size: str) -> tuple[float, float]:
    """Seconds of the project's split of ``root/data/raw`` with its index, and with the index moved away."""
    from cxr.core.paths import Paths
    from cxr.core.sections import Base, Split
    from cxr.data.rawindex import index_path
    from cxr.data.split import split

    base = Base(classes=list(CLASSES))
    cfg = Split(valid=400, test=400, workers=workers) if size == "full" else Split(valid=8, test=8, workers=workers)
    paths = Paths().resolve(root)
    index = index_path(paths.raw)
    with timer() as t_index:
        split(base, cfg, paths)
    with_index = paths.manifest.read_bytes()
    aside = index.with_name("index.aside")
    os.replace(index, aside)
    try:
        with timer() as t_hash:
            split(base, cfg, paths)
    finally:
        os.replace(aside, index)
    if paths.manifest.read_bytes() != with_index:
        raise RuntimeError("the split from the index and the split that hashes every image wrote other manifests")
    return t_index["s"], t_hash["s"]


def run(size: str, work: Path) -> Outcome:
    """Run the ingestion and DVC benchmark at ``size`` ('full' or 'tiny') with scratch space under ``work``."""
    from cxr.data.ingest import ingest
    from cxr.data.rawindex import build_index, from_ingestion, index_path, write_index
    from cxr.data.rawstore import pack
    from cxr.ops.dvc import track_raw

    src = synthetic_dataset(work, size)
    workers = os.cpu_count() or 1
    pairs = _pairs(src)
    n_images = len(pairs)

    # Both sides read from the page cache, as after a download or an extraction (which just wrote the
    # files): a source evicted by earlier work would otherwise time the disk, not the checks.
    with timer() as t_warm:
        for pair in pairs:
            for p in pair:
                if p is not None:
                    p.read_bytes()

    # Baseline: an even subset, images and their masks (what ingestion reads).
    k = max(1, n_images // NAIVE_IMAGES[size])
    subset = pairs[::k][: NAIVE_IMAGES[size]]
    files = [p for pair in subset for p in pair if p is not None]
    naive_loop(files[:8])  # warm the imports
    with timer() as t_naive:
        naive_loop(files)
    naive_ips = len(subset) / t_naive["s"]

    root = git_dvc_repo(work / "ingest" / "repo")
    loose = work / "ingest" / "loose"
    if loose.exists():
        shutil.rmtree(loose)
    with timer() as t_ingest:
        report = ingest(src, loose, list(CLASSES), workers=workers)
    ingested = sum(report.counts.values())
    if ingested != n_images or report.bad:
        raise RuntimeError(f"ingestion of {src} kept {ingested} of {n_images} images ({len(report.bad)} bad)")
    ours_ips = ingested / t_ingest["s"]
    per_core = ours_ips / workers

    raw = root / "data" / "raw"
    raw.mkdir(parents=True)
    with timer() as t_index:  # as the download step does: the index from what ingestion computed
        write_index(index_path(loose), build_index(loose, CLASSES, from_ingestion(report.records), workers))
    with timer() as t_pack:
        archives = pack(loose, raw)
    shutil.rmtree(loose)
    t_split_index, t_split_hash = split_both_ways(root, workers, size)
    with timer() as t_add:
        track_raw(root, "data/raw", {"source": "synthetic", "benchmark": "ingest"})
    (root / "dvc.yaml").write_text(DVC_YAML)
    t_first, _ = _dvc(["repro", "--quiet"], root)
    t_version, _ = _dvc(["--version"], root)
    t_status, status = _dvc(["status"], root)
    t_repro, repro = _dvc(["repro"], root)
    if "Running stage" in repro or "up to date" not in status.lower():
        raise RuntimeError(f"the no-op was not a no-op:\n{status}\n{repro}")
    noop = t_status + t_repro

    out = Outcome("ingest")
    out.rows = [
        Row(
            f"ingest {ingested} images ({len(report.records) + sum(report.masks.values())} files), per core",
            per_core,
            "img/s/core",
            naive_ips,
            per_core / naive_ips,
        ),
        Row(f"ingest, all {workers} cores", ours_ips, "img/s", naive_ips, ours_ips / naive_ips),
        Row("naive PIL open+load+sha256 loop (1 core)", naive_ips, "img/s"),
        Row(f"pack data/raw into {len(archives)} zips (stored, no compression)", t_pack["s"], "s"),
        Row("dvc track data/raw (track_raw)", t_add["s"], "s"),
        Row("first dvc repro (hashes data/raw again)", t_first, "s"),
        Row("no-op dvc status", t_status, "s"),
        Row("no-op dvc repro", t_repro, "s"),
        Row("dvc --version (start-up floor)", t_version, "s"),
        Row(
            "split (cxr.data.split.split) reading the index",
            t_split_index,
            "s",
            t_split_hash,
            t_split_hash / t_split_index,
        ),
        Row("split decoding and hashing every image (no index)", t_split_hash, "s"),
        Row("write the index at download (from ingestion's records)", t_index["s"], "s"),
    ]
    out.figures = [
        Figure("ingest_images_per_s_per_core", per_core, (">=", 400)),
        Figure("dvc_add_full_s", t_pack["s"] + t_add["s"]),
        Figure("dvc_noop_repro_full_s", noop, ("<", NOOP_GOAL_S)),
        Figure("split_full_s", t_split_index),
    ]
    out.extra = {
        "ingest_images": ingested,
        "ingest_files": len(report.records) + sum(report.masks.values()),
        "ingest_workers": workers,
        "ingest_source_read_s": t_warm["s"],
        "ingest_images_per_s": ours_ips,
        "ingest_naive_images_per_s": naive_ips,
        "ingest_speedup_per_core_vs_naive": per_core / naive_ips,
        "raw_pack_full_s": t_pack["s"],
        "dvc_track_full_s": t_add["s"],
        "dvc_first_repro_full_s": t_first,
        "dvc_status_noop_full_s": t_status,
        "dvc_repro_noop_full_s": t_repro,
        "dvc_startup_s": t_version,
        "split_full_no_index_s": t_split_hash,
        "split_index_speedup": t_split_hash / t_split_index,
        "raw_index_write_s": t_index["s"],
    }
    out.notes.append(
        f"per core = images/s over {workers} ingestion threads / {workers}; the naive loop is single-threaded "
        f"on {len(subset)} images + masks; ours also checks mode/size/alpha, computes a perceptual hash and "
        f"writes a copy of every file; both read a source in the page cache (reading it first took {t_warm['s']:.1f}s)"
    )
    if size == "full" and noop >= NOOP_GOAL_S:  # say what dominates
        prof_file = work / "ingest" / "dvc_status_profile.txt"
        top = profile_dvc_status(root, prof_file)
        out.notes.append(f"dvc status profile (cumulative, in-process) in {prof_file}; top: " + " | ".join(top[:8]))
    return out
