"""The input pipeline: the split manifest, a decoded uint8 cache, augmentation presets and batches."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

from cxr.models import GRAY_MEAN, GRAY_STD
from cxr.rawstore import RawStore

if TYPE_CHECKING:  # only for annotations: the served model reads images through this module without pydantic
    from cxr.config import Augment

log = logging.getLogger(__name__)

MANIFEST_FIELDS: tuple[str, ...] = ("path", "folder", "label", "split", "sha256", "group", "source")
SPLITS: tuple[str, ...] = ("train", "valid", "test")


@dataclass(frozen=True)
class Manifest:
    """The split manifest: one row per image, paths relative to the raw data folder."""

    rows: tuple[dict[str, str], ...]

    def select(self, split: str) -> "Manifest":
        """Rows of one split."""
        return Manifest(tuple(r for r in self.rows if r["split"] == split))

    def labels(self, classes: Sequence[str]) -> np.ndarray:
        """Label indices in ``classes`` order."""
        index = {c: i for i, c in enumerate(classes)}
        try:
            return np.array([index[r["label"]] for r in self.rows], dtype=np.int64)
        except KeyError as err:
            raise ValueError(f"manifest label {err.args[0]!r} is not one of {list(classes)}") from None

    def __len__(self) -> int:
        return len(self.rows)


def read_manifest(path: Path) -> Manifest:
    """Read a manifest CSV written by the split step."""
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            missing = set(MANIFEST_FIELDS) - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{path}: manifest lacks columns {sorted(missing)}")
            return Manifest(tuple(reader))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: manifest not found; run the split step first") from None


def write_manifest(rows: Sequence[dict[str, str]], path: Path) -> None:
    """Write a manifest atomically, byte-identical for identical rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def write_json(path: Path, data, sort_keys: bool = False) -> None:
    """Write JSON atomically: a crash never leaves a half-written metrics or report file."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")
    os.replace(tmp, path)


def to_gray(image: np.ndarray) -> np.ndarray:
    """Any decoded image (gray, RGB, RGBA, 8 or 16 bit) as 2-D uint8: the one place grayscale is handled."""
    if image.ndim == 3:
        if image.shape[2] == 4:
            image = image[:, :, :3]
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.shape[2] == 3 else image[:, :, 0]
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        lo, hi = float(image.min()), float(image.max())
        image = np.zeros(image.shape, np.uint8) if hi <= lo else ((image - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    return image


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D uint8 image to ``size`` x ``size`` (area interpolation when shrinking)."""
    if image.shape == (size, size):
        return image
    shrink = image.shape[0] > size or image.shape[1] > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def decode(data: bytes | np.ndarray, size: int, name: str = "<bytes>") -> np.ndarray:
    """Encoded image bytes (PNG, JPEG) or an array to a ``size`` x ``size`` uint8 gray array."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ValueError(f"{name}: cannot be decoded as an image")
    else:
        image = np.asarray(data)
        if image.ndim == 3 and image.shape[2] == 3:
            image = image[:, :, ::-1]  # arrays from users are RGB; to_gray expects OpenCV's BGR
    return resize_square(to_gray(image), size)


def load_image(path: Path, size: int) -> np.ndarray:
    """Read and decode one image file at training resolution."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror})") from None
    return decode(data, size, str(path))


def load_raw(store: RawStore, rel: str, size: int) -> np.ndarray:
    """Read and decode one image of the raw data (packed or loose) at training resolution."""
    return decode(store.read(rel), size, store.describe(rel))


def cache_key(manifest: Manifest, size: int) -> str:
    """Hash of the images' contents and the resolution: the cache is rebuilt when either changes."""
    h = hashlib.sha256(f"v1:{size}".encode())
    for r in manifest.rows:
        h.update(r["path"].encode())
        h.update(r["sha256"].encode())
    return h.hexdigest()[:20]


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


def _build_cache(manifest: Manifest, raw: Path, path: Path, size: int, workers: int) -> None:
    """Decode the manifest's images into ``path`` through a temporary file renamed into place."""
    rels = [r["path"] for r in manifest.rows]
    tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(rels), size, size))
    try:
        with RawStore(raw) as store:

            def fill(i: int) -> None:
                out[i] = load_raw(store, rels[i], size)

            # OpenCV releases the GIL while decoding, so threads scale (archive reads are short and locked).
            with ThreadPoolExecutor(max(1, workers)) as pool:
                list(pool.map(fill, range(len(rels))))
        out.flush()
        del out
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("decoded %d images at %d px into %s", len(rels), size, path)


def train_transform(aug: Augment, seed: int = 0):
    """The train-time augmentation preset (Albumentations) on 2-D uint8 images: the reference definition.

    Training applies it through ``cxr.augment`` (the same parameters, drawn per sample, on the CPU or the
    device); the tests hold both paths to this ``Compose``.
    """
    import albumentations as A

    steps = [
        A.Affine(
            rotate=(-aug.rotate_deg, aug.rotate_deg),
            translate_percent=(-aug.shift, aug.shift),
            scale=(1 - aug.scale, 1 + aug.scale),
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            p=aug.p,
        ),
        A.RandomBrightnessContrast(brightness_limit=aug.brightness, contrast_limit=aug.contrast, p=aug.p),
        A.RandomGamma(gamma_limit=(aug.gamma[0] * 100, aug.gamma[1] * 100), p=aug.p),
    ]
    if aug.clahe > 0:
        steps.append(A.CLAHE(clip_limit=2.0, tile_grid_size=(8, 8), p=aug.clahe))
    if aug.hflip > 0:
        steps.append(A.HorizontalFlip(p=aug.hflip))
    return A.Compose(steps, seed=seed)


def to_input(batch: torch.Tensor, device: torch.device | str, channels_last: bool = False) -> torch.Tensor:
    """uint8 (B, 1, H, W) to the normalised float input of the model: the one place normalisation lives."""
    x = batch.to(device, non_blocking=True).float().div_(255.0).sub_(GRAY_MEAN).div_(GRAY_STD)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class CachedImages(Dataset):
    """Samples from the decoded cache, augmented with parameters drawn from a seed the sampler hands over.

    With ``augment`` the preset is applied here, on the CPU (``cxr.augment.apply_cpu``). With ``defer`` too,
    a sample is (uint8 image, label, parameters) and the training loop applies the parameters to the whole
    batch on its device (``cxr.augment.apply_batch``): the workers then only copy rows of the cache.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: Augment | None = None,
                 defer: bool = False) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels
        self.augment = augment
        self.defer = defer

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, ...]:
        # Imported here: the split step imports this module and must not depend on the augmentation code.
        from cxr.augment import apply_cpu, draw_params

        index, seed = item if isinstance(item, tuple) else (item, None)
        image = np.array(self.images[index])  # a writable copy of the read-only cache row
        label = int(self.labels[index])
        if self.augment is not None:
            # Seeding per sample makes augmentation independent of workers, order, resumption and device.
            params = draw_params(self.augment, index if seed is None else seed)
            if self.defer:
                return torch.from_numpy(image).unsqueeze(0), label, torch.from_numpy(params)
            if cv2.getNumThreads() != 1 and get_worker_info() is not None:
                # One process per core already: OpenCV's own pool in every worker would oversubscribe the CPU.
                cv2.setNumThreads(1)
            image = apply_cpu(image, params)
        return torch.from_numpy(image).unsqueeze(0), label


class SeededSampler(Sampler):
    """Yields (index, augmentation seed) for one epoch, a pure function of (seed, epoch): resumable and shardable."""

    def __init__(
        self,
        n: int,
        seed: int,
        shuffle: bool = True,
        weights: np.ndarray | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.n, self.seed, self.shuffle, self.weights = n, seed, shuffle, weights
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order and seeds to yield."""
        self.epoch = epoch

    def _order(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.weights is not None:
            p = self.weights / self.weights.sum()
            return rng.choice(self.n, size=self.n, replace=True, p=p)
        return rng.permutation(self.n) if self.shuffle else np.arange(self.n)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self._order()
        seeds = np.random.default_rng([self.seed, self.epoch, 1]).integers(0, 2**31 - 1, size=len(order))
        # Pad so every rank gets the same number of samples (DDP needs equal step counts).
        per_rank = -(-len(order) // self.world_size)
        total = per_rank * self.world_size
        if total > len(order):
            order = np.concatenate([order, order[: total - len(order)]])
            seeds = np.concatenate([seeds, seeds[: total - len(seeds)]])
        for i in range(self.rank, total, self.world_size):
            yield int(order[i]), int(seeds[i])

    def __len__(self) -> int:
        return -(-self.n // self.world_size)
