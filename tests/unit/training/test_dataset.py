"""Batches for training: augmentation as a function of the seed, deferred to the device or not, and the seeded,
resumable, sharded sampler."""

from __future__ import annotations

import numpy as np
import torch

from cxr.core.sections import Augment
from cxr.model.cache import CachedImages
from cxr.training.dataset import AugmentedImages, SeededSampler
from cxr.training.presets import draw_params


def test_augmentation_is_a_function_of_the_seed() -> None:
    images = np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8)
    ds = AugmentedImages(images, np.array([0, 1, 2]), Augment(p=1.0))
    a, b, c = ds[(1, 123)][0], ds[(1, 123)][0], ds[(1, 124)][0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Deferred to the device: the untouched row travels with the parameters the same seed draws.
    image, label, params = AugmentedImages(images, np.array([0, 1, 2]), Augment(p=1.0), defer=True)[(1, 123)]
    assert torch.equal(image[0], torch.from_numpy(images[1])) and label == 1
    assert params.dtype == torch.float64 and torch.equal(params, torch.from_numpy(draw_params(Augment(p=1.0), 123)))
    plain = CachedImages(images, np.array([0, 1, 2]))
    assert torch.equal(plain[1][0][0], torch.from_numpy(images[1]))  # eval is the identity on the cache


def test_sampler_is_seeded_resumable_and_shards() -> None:
    s = SeededSampler(10, seed=5)
    s.set_epoch(3)
    first = list(s)
    s.set_epoch(3)
    assert list(s) == first and sorted(i for i, _ in first) == list(range(10))
    s.set_epoch(4)
    assert list(s) != first
    shards = []
    for rank in (0, 1):
        r = SeededSampler(10, seed=5, rank=rank, world_size=2)
        r.set_epoch(3)
        shards.append(list(r))
    assert len(shards[0]) == len(shards[1]) == 5
    assert sorted(shards[0] + shards[1]) == sorted(first)
