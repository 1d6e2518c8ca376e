"""Training batches: the augmented dataset over the decoded cache, the seeded, shardable sampler and the loaders."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from cxr.core.paths import ResolvedPaths
from cxr.core.sections import Augment, Base, Train
from cxr.data.manifest import Manifest, read_manifest
from cxr.model.cache import CachedImages, decoded_cache
from cxr.training.optim import class_weights
from cxr.training.presets import apply_cpu, choose_path, draw_params, geometric
from cxr.training.transforms import apply_compose, preset_compose

log = logging.getLogger(__name__)


class AugmentedImages(CachedImages):
    """Samples from the decoded cache, augmented from a seed the sampler hands over, by one path (``choose_path``).

    ``fast`` (the built-in steps, ``presets.apply_cpu``) and ``compose`` (the whole Albumentations ``Compose``,
    ``transforms.apply_compose``) augment here, in the loader workers. With ``device``, a sample is (uint8 image,
    label, parameters) and the training loop applies the parameters to the whole batch on its device
    (``presets.apply_batch``): the workers then only copy rows of the cache.

    ``masks`` (uint8 (N, H, W), 255 outside the lungs: the lung-attention loss's, :func:`outside_lungs`): each
    sample ends with its mask (1, H, W), moved as its image is (``presets.geometric``: the same warp and flip, no
    intensity step); on the device path the loop moves it with the batch. What a warp brings in from beyond the
    image's edge is 0 in the mask as in the image: padding is not anatomy outside the lungs.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        augment: Augment,
        path: Literal["fast", "compose", "device"] = "fast",
        masks: np.ndarray | None = None,
    ) -> None:
        if augment.extra and path != "compose":
            raise ValueError(f"train.augment.extra runs only through the Compose path, not {path!r} (choose_path)")
        if masks is not None and masks.shape != images.shape[:1] + images.shape[-2:]:
            raise ValueError(f"lung masks {masks.shape} do not match the images {images.shape}")
        super().__init__(images, labels)
        self.augment = augment
        self.path = path
        self.masks = masks
        self.compose = preset_compose(augment) if path == "compose" else None

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, ...]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        image, label = super().__getitem__(index)
        # Seeding per sample makes augmentation independent of workers, order, resumption and device.
        seed = index if seed is None else seed
        mask = None if self.masks is None else self.masks[index]
        if self.path == "device":
            out: tuple = (image, label, torch.from_numpy(draw_params(self.augment, seed)))
            return out if mask is None else (*out, torch.from_numpy(np.array(mask)).unsqueeze(0))
        pixels = image[0].numpy()
        if self.compose is not None:
            if mask is None:
                pixels = apply_compose(self.compose, pixels, seed)
            else:
                pixels, mask = apply_compose(self.compose, pixels, seed, np.array(mask))
        else:
            params = draw_params(self.augment, seed)
            pixels = apply_cpu(pixels, params)
            if mask is not None:
                mask = apply_cpu(np.array(mask), geometric(params))
        out = (torch.from_numpy(pixels).unsqueeze(0), label)
        return out if mask is None else (*out, torch.from_numpy(mask).unsqueeze(0))


def outside_lungs(rows: list[dict[str, str]], raw, size: int) -> tuple[np.ndarray, int]:
    """Where ``rows``' images lie outside their lung masks, at ``size``: uint8 (N, size, size), 255 outside the
    lungs, and how many images have a mask; an image without one is 0 everywhere (nothing to count against)."""
    from cxr.data.masks import lung_mask_path, read_mask
    from cxr.data.rawstore import RawStore

    out = np.zeros((len(rows), size, size), dtype=np.uint8)
    found = 0
    with RawStore(raw) as store:
        for i, row in enumerate(rows):
            m = read_mask(store, lung_mask_path(row), size)
            if m is not None:
                out[i] = np.where(m, 0, 255)
                found += 1
    return out, found


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


@dataclass(frozen=True)
class TrainData:
    """The manifest, the train split's rows and decoded images, its class weights, sampler and both loaders."""

    manifest: Manifest
    train_split: Manifest
    train_images: np.ndarray
    class_weights: np.ndarray
    sampler: SeededSampler
    train_loader: DataLoader
    valid_loader: DataLoader


def build_data(
    cfg: Train, base: Base, paths: ResolvedPaths, device: torch.device, rank: int = 0, world: int = 1
) -> TrainData:
    """Read the train and valid splits into the decoded cache and wrap them in the loaders of process ``rank``."""
    # First: a bad augmentation setting stops here, before any image is read.
    path = choose_path(cfg.augment, cfg.augment_backend, device, cfg.image_size)
    if rank == 0:
        log.info("augmentation: %s", path.why)
    classes = base.labels
    manifest = read_manifest(paths.manifest)
    train_m, valid_m = manifest.select("train"), manifest.select("valid")
    if len(train_m) == 0 or len(valid_m) == 0:
        raise ValueError(f"{paths.manifest}: the train and valid splits must both be non-empty")
    y_train, y_valid = train_m.labels(classes), valid_m.labels(classes)
    workers = max(1, cfg.num_workers)
    x_train = decoded_cache(train_m, paths.raw, paths.cache, cfg.image_size, workers=workers)
    x_valid = decoded_cache(valid_m, paths.raw, paths.cache, cfg.image_size, workers=workers)

    masks = None
    if cfg.lung_attention > 0:
        masks, found = outside_lungs(train_m.rows, paths.raw, cfg.image_size)
        if rank == 0:
            log_at = log.warning if found < len(masks) else log.info
            log_at(
                "lung attention (weight %g): %d of %d training images have a lung mask%s",
                cfg.lung_attention,
                found,
                len(masks),
                "; the others add nothing to it" if found < len(masks) else "",
            )

    weights = class_weights(y_train, len(classes))
    sampler_weights = weights[y_train] if cfg.class_balance == "sampler" else None
    sampler = SeededSampler(len(y_train), base.seed, True, sampler_weights, rank, world)
    if cfg.batch_size % world:
        raise ValueError(f"train.batch_size={cfg.batch_size} must be a multiple of the {world} processes")
    # Each rank takes an interleaved share of every global batch, so the global batch (and the
    # gradient DDP averages) is the one a single process would see.
    per_rank = cfg.batch_size // world
    if cfg.num_workers > 0 and path.name != "device":
        # One process per core already: OpenCV's own pool in every worker would oversubscribe the CPU. Set
        # here, before the workers fork: set in a forked worker, it can hang for good once this process's
        # pool has run (OpenCV's pthreads pool; more than half the time in a test of 30 forks).
        cv2.setNumThreads(1)
    train_loader = DataLoader(
        AugmentedImages(x_train, y_train, cfg.augment, path.name, masks),
        batch_size=per_rank,
        sampler=sampler,
        drop_last=len(sampler) > per_rank,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
        prefetch_factor=4 if cfg.num_workers > 0 else None,
    )
    valid_loader = DataLoader(CachedImages(x_valid, y_valid), batch_size=cfg.batch_size * 2, shuffle=False)
    return TrainData(manifest, train_m, x_train, weights, sampler, train_loader, valid_loader)
