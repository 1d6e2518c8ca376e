"""The train-time augmentation as an Albumentations ``Compose``: the built-in steps, the user's, and the seeding.

``preset_compose`` is the definition of what trains: the built-in steps of ``train.augment`` (``builtin_steps``)
followed by the transforms listed in ``train.augment.extra``. To add a transform in code, append it to the list
in ``preset_compose``; ``cxr/training`` is a dependency of the DVC train stage, so ``dvc repro`` retrains.

Each sample is augmented from the seed the sampler hands over (``seed_compose``): one NumPy and one Python
generator from that seed, shared by the steps in the Compose's order. ``Compose.set_random_seed`` is not used:
it gives every step its own generator with the same seed, so steps of one probability would all apply or none,
and their draws would be the same numbers.

When the Compose holds only the built-in steps, ``cxr.training.presets`` applies them faster with the same
draws and pixels (``presets.choose_path`` decides which path runs). Albumentations imports torch, so it is
imported where it is used, not with this module.
"""

from __future__ import annotations

import difflib
import random
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from cxr.core.sections import ConfigError

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
    """The train-time augmentation: the built-in steps, then ``train.augment.extra``; add a transform in code here."""
    import albumentations as A

    steps = [*builtin_steps(aug), *extra_steps(aug.extra)]
    return A.Compose(steps, seed=0)


def _transform_classes() -> dict[str, type]:
    """Albumentations' image transforms by class name (not its base classes)."""
    import albumentations as A

    return {
        name: obj
        for name, obj in vars(A).items()
        if isinstance(obj, type)
        and issubclass(obj, A.BasicTransform)
        and obj.__module__ != "albumentations.core.transforms_interface"
    }


def _reason(err: Exception) -> str:
    """A library error in one short line: the first field and message of a validation error, else the message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if "validation error" in lines[0] and len(lines) >= 3:  # pydantic's text, which Albumentations re-raises
        return f"{lines[1]}: {lines[2].split(' [type=')[0]}"
    return lines[0]


def extra_steps(extra: list[dict[str, Any]]) -> list[A.BasicTransform]:
    """``train.augment.extra`` built: each entry's transform with its keyword arguments; ConfigError naming it."""
    known = _transform_classes() if extra else {}
    steps = []
    for i, entry in enumerate(extra):
        kwargs = dict(entry)
        name = kwargs.pop("name")
        key = f"train.augment.extra[{i}]"
        if name not in known:
            import albumentations as A

            if hasattr(A, name):
                raise ConfigError(f"{key}: {name!r} is not an Albumentations image transform")
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{key}: {name!r} is not an Albumentations transform{hint}")
        try:
            # strict: an argument the transform does not take is an error, not a warning.
            steps.append(known[name](**kwargs, strict=True))
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{key} ({name}): {_reason(err)}") from None
    return steps


def check_extra(aug: Augment, size: int) -> None:
    """Build each ``train.augment.extra`` step and run it once on a grey ``size`` x ``size`` uint8 image.

    Training needs a uint8 image of the input's size back; a transform that fails on one grey channel, or
    changes the size or type, stops here naming its key, before any data is read.
    """
    probe = np.tile(np.linspace(0, 255, size).astype(np.uint8), (size, 1))
    for i, step in enumerate(extra_steps(aug.extra)):
        key, name = f"train.augment.extra[{i}]", type(step).__name__
        try:
            out = step(image=probe.copy(), force_apply=True)["image"]
        except Exception as err:  # any failure of a user's transform is a config error, named
            raise ConfigError(f"{key} ({name}) fails on a grey {size}x{size} uint8 image: {_reason(err)}") from None
        if out.shape != probe.shape or out.dtype != np.uint8:
            raise ConfigError(
                f"{key} ({name}) returns {out.dtype} {tuple(out.shape)} for a grey uint8 image {probe.shape}: "
                "training needs a uint8 image of the input's size"
            )


def added_steps(compose: A.Compose, aug: Augment) -> list[str]:
    """The steps of ``compose`` beyond the built-in ones, by class name; empty when it holds exactly those."""
    builtin = [t.to_dict_private() for t in builtin_steps(aug)]
    steps = [t.to_dict_private() for t in compose.transforms]
    if steps == builtin:
        return []
    names = [s["__class_fullname__"] for s in steps if s not in builtin]
    return names or ["the built-in steps in another order"]


def seed_compose(compose: A.Compose, seed: int) -> None:
    """Seed ``compose`` for one sample: one NumPy and one Python generator, shared by its steps in order."""
    compose.set_random_state(np.random.default_rng(int(seed)), random.Random(int(seed)))


def apply_compose(compose: A.Compose, image: np.ndarray, seed: int, mask: np.ndarray | None = None):
    """``compose`` on one 2-D uint8 image, seeded with the sample's seed; the same size and type come back.
    With ``mask`` (2-D uint8), (image, mask): the mask moved by the geometric steps, as Albumentations moves masks."""
    seed_compose(compose, seed)
    result = compose(image=image) if mask is None else compose(image=image, mask=mask)
    out = result["image"]
    if out.shape != image.shape or out.dtype != np.uint8:
        steps = ", ".join(type(t).__name__ for t in compose.transforms)
        raise ValueError(
            f"the train augmentation ({steps}) returned {out.dtype} {tuple(out.shape)} for a uint8 image "
            f"{tuple(image.shape)}: training needs a uint8 image of the input's size"
        )
    return out if mask is None else (out, np.ascontiguousarray(result["mask"]))
