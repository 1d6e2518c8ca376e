"""The train-time augmentation as an Albumentations ``Compose``: its built-in steps and its per-sample seeding.

``preset_compose`` is the definition of what trains: the built-in steps of ``train.augment`` (``builtin_steps``).

Each sample is augmented from the seed the sampler hands over (``seed_compose``): one NumPy and one Python
generator from that seed, shared by the steps in the Compose's order. ``Compose.set_random_seed`` is not used:
it gives every step its own generator with the same seed, so steps of one probability would all apply or none,
and their draws would be the same numbers.

``cxr.training.presets`` applies the built-in steps faster with the same draws and pixels. Albumentations
imports torch, so it is imported where it is used, not with this module.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    import albumentations as A

    from cxr.core.sections import Augment

#: ``A.CLAHE``'s clip limit range and tile grid in the built-in steps.
CLAHE_CLIP: tuple[float, float] = (1.0, 2.0)
CLAHE_GRID: tuple[int, int] = (8, 8)


def builtin_steps(aug: Augment) -> list[A.BasicTransform]:
    """The built-in steps of ``train.augment``, in order: the ones ``cxr.training.presets`` reproduces.

    Change a step here only together with ``draw_params``, ``apply_cpu`` and ``apply_batch`` in presets.py;
    tests/unit/training/test_presets.py holds them to these steps draw for draw and pixel for pixel.
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
    ]
    if gamma_step(aug):
        steps.append(A.RandomGamma(gamma_limit=(aug.gamma[0] * 100, aug.gamma[1] * 100), p=aug.p))
    if aug.clahe > 0:
        steps.append(A.CLAHE(clip_limit=CLAHE_CLIP, tile_grid_size=CLAHE_GRID, p=aug.clahe))
    if aug.hflip > 0:
        steps.append(A.HorizontalFlip(p=aug.hflip))
    return steps


def gamma_step(aug: Augment) -> bool:
    """Whether the preset has a gamma step: ``gamma: [1, 1]`` means none (Albumentations' gamma 1 table is not
    the identity: it truncates some levels by one)."""
    return tuple(aug.gamma) != (1.0, 1.0)


def preset_compose(aug: Augment) -> A.Compose:
    """The train-time augmentation as the ``Compose`` that defines it."""
    import albumentations as A

    return A.Compose(builtin_steps(aug), seed=0)


def seed_compose(compose: A.Compose, seed: int) -> None:
    """Seed ``compose`` for one sample: one NumPy and one Python generator, shared by its steps in order."""
    compose.set_random_state(np.random.default_rng(int(seed)), random.Random(int(seed)))


def apply_compose(compose: A.Compose, image: np.ndarray, seed: int) -> np.ndarray:
    """``compose`` on one 2-D uint8 image, seeded with the sample's seed; the same size and type come back."""
    seed_compose(compose, seed)
    out = compose(image=image)["image"]
    if out.shape != image.shape or out.dtype != np.uint8:
        steps = ", ".join(type(t).__name__ for t in compose.transforms)
        raise ValueError(
            f"the train augmentation ({steps}) returned {out.dtype} {tuple(out.shape)} for a uint8 image "
            f"{tuple(image.shape)}: training needs a uint8 image of the input's size"
        )
    return out
