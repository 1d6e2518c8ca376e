"""Batches for training: augmentation as a function of the seed, by the fast path, the Compose or deferred to the
device, and the seeded, resumable, sharded sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cxr.core.sections import Augment
from cxr.model.cache import CachedImages
from cxr.training.dataset import AugmentedImages, SeededSampler
from cxr.training.presets import apply_cpu, draw_params
from cxr.training.transforms import preset_compose, seed_compose

IMAGES = np.random.default_rng(0).integers(0, 255, (6, 32, 32), dtype=np.uint8)
LABELS = np.arange(6) % 3
#: A user's step whose effect shows in every pixel: the image inverted, always.
INVERT = Augment(p=1.0, extra=[{"name": "InvertImg", "p": 1.0}])
NOISE = Augment(extra=[{"name": "GaussNoise", "p": 0.5, "std_range": [0.05, 0.1]}])


def test_augmentation_is_a_function_of_the_seed() -> None:
    images, labels = IMAGES[:3], LABELS[:3]
    ds = AugmentedImages(images, labels, Augment(p=1.0))
    a, b, c = ds[(1, 123)][0], ds[(1, 123)][0], ds[(1, 124)][0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Deferred to the device: the untouched row travels with the parameters the same seed draws.
    image, label, params = AugmentedImages(images, labels, Augment(p=1.0), path="device")[(1, 123)]
    assert torch.equal(image[0], torch.from_numpy(images[1])) and label == 1
    assert params.dtype == torch.float64 and torch.equal(params, torch.from_numpy(draw_params(Augment(p=1.0), 123)))
    plain = CachedImages(images, labels)
    assert torch.equal(plain[1][0][0], torch.from_numpy(images[1]))  # eval is the identity on the cache


@pytest.mark.parametrize("aug", [Augment(p=1.0, clahe=0.5), NOISE], ids=["builtin", "noise"])
def test_the_compose_path_is_the_seeded_compose(aug: Augment) -> None:
    """What training sees by the Compose path: ``preset_compose`` seeded with the sample's seed, nothing else."""
    ds = AugmentedImages(IMAGES, LABELS, aug, path="compose")
    compose = preset_compose(aug)
    for index, seed in ((0, 7), (3, 7), (3, 2**31 - 2), (5, 0)):
        seed_compose(compose, seed)
        want = compose(image=IMAGES[index].copy())["image"]
        got, label = ds[(index, seed)]
        assert got.dtype == torch.uint8 and got.shape == (1, 32, 32) and label == LABELS[index]
        assert np.array_equal(got[0].numpy(), want), (index, seed)
    assert not torch.equal(ds[(3, 7)][0], ds[(3, 8)][0])


def test_an_extra_transform_changes_what_training_sees() -> None:
    """A step from ``train.augment.extra`` runs after the built-in ones, which draw what they drew without it."""
    ds = AugmentedImages(IMAGES, LABELS, INVERT, path="compose")
    for seed in (1, 2, 3):
        builtin = apply_cpu(IMAGES[2].copy(), draw_params(INVERT, seed))
        assert np.array_equal(ds[(2, seed)][0][0].numpy(), 255 - builtin), seed
    with pytest.raises(ValueError, match="extra runs only through the Compose"):
        AugmentedImages(IMAGES, LABELS, INVERT)  # the fast path would drop the user's step


def _epoch(ds: AugmentedImages, workers: int, epoch: int) -> torch.Tensor:
    sampler = SeededSampler(len(ds), seed=3)
    sampler.set_epoch(epoch)
    # Spawned workers: fresh processes that inherit nothing from this one (a forked worker would also carry
    # whatever the tests run before in this process left behind, which is not what this test is about).
    context = "spawn" if workers else None
    loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=workers, multiprocessing_context=context)
    return torch.cat([x for x, _y in loader])


def test_the_compose_path_does_not_depend_on_workers_or_resumption() -> None:
    """The same epoch in this process, in two fresh worker processes and again after another epoch: same pixels."""
    ds = AugmentedImages(IMAGES, LABELS, NOISE, path="compose")
    here = _epoch(ds, 0, epoch=2)
    _epoch(ds, 0, epoch=1)  # the Compose's generators moved on; a resumed run starts at epoch 2 afresh
    assert torch.equal(_epoch(ds, 0, epoch=2), here)
    assert torch.equal(_epoch(AugmentedImages(IMAGES, LABELS, NOISE, path="compose"), 2, epoch=2), here)
    assert not torch.equal(_epoch(ds, 0, epoch=3), here)


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
