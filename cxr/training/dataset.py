"""Training batches: the augmented dataset over the decoded cache and the seeded, shardable sampler."""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import Sampler, get_worker_info

from cxr.core.sections import Augment
from cxr.model.cache import CachedImages
from cxr.training.presets import apply_cpu, draw_params


class AugmentedImages(CachedImages):
    """Samples from the decoded cache, augmented with parameters drawn from a seed the sampler hands over.

    On the CPU (``defer=False``) the preset is applied here, in the loader workers (``presets.apply_cpu``).
    With ``defer``, a sample is (uint8 image, label, parameters) and the training loop applies the parameters
    to the whole batch on its device (``presets.apply_batch``): the workers then only copy rows of the cache.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: Augment, defer: bool = False) -> None:
        super().__init__(images, labels)
        self.augment = augment
        self.defer = defer

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, ...]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        image, label = super().__getitem__(index)
        # Seeding per sample makes augmentation independent of workers, order, resumption and device.
        params = draw_params(self.augment, index if seed is None else seed)
        if self.defer:
            return image, label, torch.from_numpy(params)
        if cv2.getNumThreads() != 1 and get_worker_info() is not None:
            # One process per core already: OpenCV's own pool in every worker would oversubscribe the CPU.
            cv2.setNumThreads(1)
        return torch.from_numpy(apply_cpu(image[0].numpy(), params)).unsqueeze(0), label


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
