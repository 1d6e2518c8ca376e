"""Deterministic synthetic chest-X-ray-like dataset.

Writes a dataset in the layout of the Kaggle "COVID-19 Radiography Database"
(v5)::

    <out>/<CLASS>/images/<CLASS>-N.png    size x size, 8-bit grayscale
    <out>/<CLASS>/masks/<CLASS>-N.png     lung mask, 256 x 256, 0/255
    <out>/<CLASS>/lesions/<CLASS>-N.png   lesion mask, size x size, 0/255
    <out>/synthetic.json                  generator version, seed, size, counts

Every sample is a pure function of ``(class, index, seed, size)``: its random
generators are seeded from ``(seed, crc32(class), index)``, so the bytes
written do not depend on the number of workers or on the order of work.

What a sample looks like, and why classes differ only inside the lungs, is
:mod:`cxr.data.synthrender`'s to say; this module writes samples as files.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cxr.data.synthrender import SYNTHETIC_CLASSES, check_class, check_size, render

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1.0.0"
MASK_SIZE = 256  # lung masks in the real dataset are 256 x 256
# Fixed PNG parameters, so the encoded bytes are reproducible.  Z_RLE is both
# faster and smaller than the default strategy on these noisy images and flat masks.
PNG_COMPRESSION = 1
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
_CHUNK = 64  # samples per task when workers > 1
_Chunk = tuple[str, str, int, int, int, int]  # out_dir, class, start, stop, seed, size


@dataclass(frozen=True)
class SyntheticSummary:
    """Where generate() wrote the dataset, how many images per class, and their size."""

    root: Path
    counts: dict[str, int]  # images written per class
    size: int


def _png(arr: np.ndarray) -> bytes:
    """PNG bytes of an array, with the fixed parameters that make them reproducible."""
    ok, buf = cv2.imencode(".png", arr, _PNG_PARAMS)
    if not ok:  # pragma: no cover
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _write_one(out_dir: Path, class_name: str, index: int, seed: int, size: int) -> None:
    """Render one sample and write its image, 256 px lung mask and lesion mask."""
    image, lung, lesion = render(class_name, index, seed, size)
    mask = cv2.resize(lung, (MASK_SIZE, MASK_SIZE), interpolation=cv2.INTER_AREA)
    mask = np.where(mask >= 128, 255, 0).astype(np.uint8)
    name = f"{class_name}-{index + 1}.png"
    base = out_dir / class_name
    (base / "images" / name).write_bytes(_png(image))
    (base / "masks" / name).write_bytes(_png(mask))
    (base / "lesions" / name).write_bytes(_png(lesion))


def _write_chunk(args: _Chunk) -> int:
    """Write samples start..stop-1 of one class; returns how many (plain arguments, to pickle to a worker)."""
    out_dir, class_name, start, stop, seed, size = args
    root = Path(out_dir)
    for i in range(start, stop):
        _write_one(root, class_name, i, seed, size)
    return stop - start


def _init_worker() -> None:
    """Set up a worker process."""
    cv2.setNumThreads(1)  # one process per core; no nested thread pools


def _write_chunks(tasks: list[_Chunk], workers: int) -> Iterator[int]:
    """Write every chunk, here or in worker processes; yields each chunk's image count as it completes."""
    if workers == 1 or len(tasks) <= 1:
        for t in tasks:
            yield _write_chunk(t)
        return
    # Spawned, not forked: a fork of a process whose OpenMP/torch threads are running can deadlock.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(int(workers), len(tasks)), initializer=_init_worker, mp_context=ctx) as ex:
        yield from ex.map(_write_chunk, tasks)


def _validate_counts(counts: Mapping[str, int]) -> dict[str, int]:
    """Counts checked (known class, int >= 0) and put in SYNTHETIC_CLASSES order."""
    clean: dict[str, int] = {}
    for name, n in counts.items():
        check_class(name)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise ValueError(f"count for class {name!r} must be an int, got {n!r}")
        if n < 0:
            raise ValueError(f"count for class {name!r} must be >= 0, got {n}")
        clean[name] = int(n)
    return {c: clean[c] for c in SYNTHETIC_CLASSES if c in clean}


def generate(
    out_dir: Path,
    counts: Mapping[str, int],
    size: int = 299,
    seed: int = 0,
    workers: int = 1,
    progress: bool = False,
) -> SyntheticSummary:
    """Write the dataset under out_dir (see the module docstring for the layout)."""
    clean = _validate_counts(counts)
    check_size(size)
    if int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out_dir)
    for name in clean:
        for sub in ("images", "masks", "lesions"):
            (out / name / sub).mkdir(parents=True, exist_ok=True)

    tasks = [
        (str(out), name, start, min(start + _CHUNK, n), int(seed), int(size))
        for name, n in clean.items()
        for start in range(0, n, _CHUNK)
    ]
    total = sum(clean.values())
    log.info("generating %d synthetic images (size=%d, seed=%d, workers=%d) under %s", total, size, seed, workers, out)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="synthetic", unit="img")
    try:
        for done in _write_chunks(tasks, workers):
            if bar is not None:
                bar.update(done)
    finally:
        if bar is not None:
            bar.close()

    meta = {
        # The generator's name, not its module's path: the same images keep the same data version.
        "generator": "cxr.synthetic",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "size": int(size),
        "counts": clean,
    }
    (out / "synthetic.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    log.info("synthetic dataset written: %s", clean)
    return SyntheticSummary(root=out, counts=clean, size=int(size))
