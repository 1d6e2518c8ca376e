"""The decoded uint8 cache of a manifest's images, and the plain (unaugmented) dataset over it."""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cxr.core.io import atomic_path
from cxr.data.manifest import Manifest
from cxr.data.rawstore import RawStore
from cxr.model.preprocess import decode
from cxr.ops.progress import Progress

log = logging.getLogger(__name__)


def cache_key(manifest: Manifest, size: int) -> str:
    """Hash of the images' contents and the resolution: the cache is rebuilt when either changes."""
    h = hashlib.sha256(f"v1:{size}".encode())
    for r in manifest.rows:
        h.update(r["path"].encode())
        h.update(r["sha256"].encode())
    return h.hexdigest()[:20]


def load_raw(store: RawStore, rel: str, size: int) -> np.ndarray:
    """Read and decode one image of the raw data (packed or loose) at training resolution."""
    return decode(store.read(rel), size, store.describe(rel))


def decoded_cache(manifest: Manifest, raw: Path, cache_dir: Path, size: int, workers: int = 2) -> np.ndarray:
    """A read-only memory map (N, size, size) uint8 of the manifest's images (in ``raw``), decoded once.

    Safe to share between processes (queued experiments, a search's trials): one builds a missing entry
    under a file lock while the others wait and then read it; the entry appears by an atomic rename.
    """
    from filelock import FileLock

    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{cache_key(manifest, size)}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    with FileLock(f"{path}.lock"):
        if path.exists():  # built by another process while this one waited
            return np.load(path, mmap_mode="r")
        _build_cache(manifest, raw, path, size, workers)
    return np.load(path, mmap_mode="r")


def _decode_into(tmp: Path, store: RawStore, rels: list[str], size: int, workers: int) -> None:
    """Decode ``rels`` into a new .npy memory map at ``tmp``; the map is closed when this returns (before a rename)."""
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(rels), size, size))

    def fill(i: int) -> None:
        out[i] = load_raw(store, rels[i], size)

    # OpenCV releases the GIL while decoding, so threads scale (archive reads are short and locked).
    with (
        ThreadPoolExecutor(max(1, workers)) as pool,
        Progress(len(rels), f"decoding images at {size} px", logger=log) as progress,
    ):
        for _ in pool.map(fill, range(len(rels))):
            progress.update()
    out.flush()


def _build_cache(manifest: Manifest, raw: Path, path: Path, size: int, workers: int) -> None:
    """Decode the manifest's images into ``path`` through a temporary file renamed into place."""
    rels = [r["path"] for r in manifest.rows]
    with atomic_path(path) as tmp, RawStore(raw) as store:
        _decode_into(tmp, store, rels, size, workers)
    log.info("decoded %d images at %d px into %s", len(rels), size, path)


class CachedImages(Dataset):
    """Samples (uint8 image (1, S, S), label) straight from the decoded cache: what evaluation and inference read.

    Training augments them in ``cxr.training.dataset.AugmentedImages``; this class knows nothing of augmentation.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = np.array(self.images[index])  # a writable copy of the read-only cache row
        return torch.from_numpy(image).unsqueeze(0), int(self.labels[index])
