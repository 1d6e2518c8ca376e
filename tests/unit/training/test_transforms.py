"""The augmentation that trains, as an Albumentations ``Compose``: the user's steps from params, the errors that
name them, and the one decision of which path applies it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr.core.sections import Augment, ConfigError
from cxr.training import presets
from cxr.training.presets import choose_path, preview_figure
from cxr.training.transforms import added_steps, builtin_steps, check_extra, extra_steps, preset_compose

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
NOISE = {"name": "GaussNoise", "p": 0.2, "std_range": [0.01, 0.03]}


def test_extra_steps_follow_the_built_in_ones_with_their_arguments() -> None:
    aug = Augment(extra=[NOISE, {"name": "Sharpen"}])
    steps = preset_compose(aug).transforms
    assert [type(t).__name__ for t in steps] == [
        "Affine",
        "RandomBrightnessContrast",
        "RandomGamma",
        "GaussNoise",
        "Sharpen",
    ]
    assert steps[3].p == 0.2 and tuple(steps[3].std_range) == (0.01, 0.03)
    assert added_steps(preset_compose(aug), aug) == ["GaussNoise", "Sharpen"]
    assert added_steps(preset_compose(Augment()), Augment()) == []


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"name": "GausNoise"},
            r"train.augment.extra\[1\]: 'GausNoise' is not an Albumentations transform; did you mean 'GaussNoise'",
        ),
        ({"name": "Compose"}, r"train.augment.extra\[1\]: 'Compose' is not an Albumentations image transform"),
        ({"name": "ImageOnlyTransform"}, r"extra\[1\]: 'ImageOnlyTransform' is not an Albumentations image transform"),
        (
            {"name": "GaussNoise", "std_range": [5, 1]},
            r"train.augment.extra\[1\] \(GaussNoise\): std_range: Value error, .* must be >= 0 and <= 1$",
        ),
        ({"name": "GaussNoise", "sigma": 0.1}, r"train.augment.extra\[1\] \(GaussNoise\): .*'sigma' are not valid"),
        (
            {"name": "GaussNoise", "p": 2},
            r"train.augment.extra\[1\] \(GaussNoise\): p: Input should be less than or equal to 1$",
        ),
    ],
)
def test_a_bad_extra_step_is_a_config_error_naming_it(entry: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        extra_steps([NOISE, entry])


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"name": "RandomCrop", "height": 16, "width": 16},
            r"extra\[0\] \(RandomCrop\) returns uint8 \(16, 16\).*input's size",
        ),
        ({"name": "ToFloat"}, r"extra\[0\] \(ToFloat\) returns float32 \(48, 48\)"),
        (
            {"name": "RandomCrop", "height": 64, "width": 64},
            r"extra\[0\] \(RandomCrop\) fails on a grey 48x48 uint8 image",
        ),
    ],
)
def test_an_extra_step_that_breaks_training_images_is_refused_before_any_work(entry: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_extra(Augment(extra=[entry]), 48)
    with pytest.raises(ConfigError, match=message):
        choose_path(Augment(extra=[entry]), "cpu", CPU, 48)


def test_the_path_is_decided_in_one_place() -> None:
    plain, extra = Augment(), Augment(extra=[NOISE])
    assert choose_path(plain, "auto", CPU).name == "fast"  # built-ins on the CPU: the faster path
    assert choose_path(plain, "cpu", CUDA).name == "fast"
    assert choose_path(plain, "auto", CUDA).name == "device"
    assert choose_path(plain, "device", CPU).name == "device"
    assert choose_path(extra, "cpu", CPU).name == "compose"
    assert choose_path(extra, "auto", CPU).name == "compose"
    fallback = choose_path(extra, "auto", CUDA)
    assert fallback.name == "compose" and "GaussNoise" in fallback.why and "auto stays off cuda" in fallback.why
    with pytest.raises(ConfigError, match="train.augment_backend 'device'.*GaussNoise.*cpu or auto"):
        choose_path(extra, "device", CUDA)


def test_a_step_added_in_code_runs_through_the_compose(monkeypatch) -> None:
    """Editing ``preset_compose`` (not params) is seen too: the fast path cannot apply a step it does not know."""
    import albumentations as A

    def edited(aug: Augment) -> A.Compose:
        return A.Compose([*builtin_steps(aug), A.InvertImg(p=1.0)], seed=0)

    monkeypatch.setattr(presets, "preset_compose", edited)
    assert choose_path(Augment(), "cpu", CPU).name == "compose"
    with pytest.raises(ConfigError, match="InvertImg"):
        choose_path(Augment(), "device", CPU)


def test_the_preview_shows_the_compose_when_it_trains() -> None:
    image = np.tile(np.linspace(20, 235, 48).astype(np.uint8), (48, 1))
    aug = Augment(p=0.0, extra=[{"name": "InvertImg", "p": 1.0}])
    fig = preview_figure(image, aug, n=3, seed=1)
    shown = [np.asarray(ax.images[0].get_array()) for ax in fig.axes if ax.images]
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert titles[1].startswith("CPU: Compose") and titles[5].startswith("device: built-ins only")
    assert all(np.array_equal(t, 255 - image) for t in shown[1:4])  # what trains: the user's step applied
    assert all(np.array_equal(t, image) for t in shown[5:8])  # the device path: built-ins only (none here)
