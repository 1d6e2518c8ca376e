"""Reference implementations the tests hold the project's code to (test oracles, not used by the package)."""

from __future__ import annotations

import cv2

from cxr.core.sections import Augment


def train_transform(aug: Augment, seed: int = 0):
    """The train-time preset as an Albumentations ``Compose`` on 2-D uint8 images.

    ``cxr.training.presets`` draws the same parameters per sample and applies them on the CPU or the device;
    the tests hold both paths to this ``Compose``, pixel for pixel given the parameters it drew.
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
