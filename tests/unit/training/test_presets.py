"""The two augmentation paths are the Albumentations preset: same draws, same pixels, same statistics.

``preset_compose`` (``A.Compose``, cxr/training/transforms.py) is what trains. The fast CPU path draws what the
``Compose`` seeded per sample draws and is held to it pixel for pixel, for a given seed and for given
parameters; the device path (run here on CPU tensors) to the CPU path given the same parameters; and the
parameters both draw per seed to the ranges and probabilities ``Compose`` uses, then to ``Compose``'s own draws
through what test patterns show (rotation and shift from a dot pattern, brightness, contrast and gamma from a
ramp). Also: the horizontal flip is off unless asked for, and the preview figure the train step draws shows
both paths.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from cxr.core.sections import Augment
from cxr.training.presets import (
    IDENTITY,
    PARAMS,
    affine_matrices,
    affine_matrix,
    apply_batch,
    apply_cpu,
    draw_params,
    on_device,
)
from cxr.training.transforms import apply_compose, preset_compose, seed_compose

WIDE = Augment(
    rotate_deg=20, shift=0.1, scale=0.2, brightness=0.3, contrast=0.25, gamma=(0.7, 1.3), clahe=0.5, hflip=0.5, p=0.6
)
COL = {name: i for i, name in enumerate(PARAMS)}


def _texture(size: int, seed: int = 0) -> np.ndarray:
    """A smooth random image (no flat areas, no saturated ones)."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur((rng.random((size, size)) * 255).astype(np.uint8), (7, 7), 3)
    return cv2.normalize(img, None, 10, 245, cv2.NORM_MINMAX)


def _compose(aug: Augment) -> A.Compose:
    """The preset that trains, recording what it drew."""
    return A.Compose(preset_compose(aug).transforms, save_applied_params=True, seed=0)


def _compose_params(applied: list, size: int) -> np.ndarray:
    """The parameter vector of what ``Compose`` applied to a ``size`` x ``size`` image."""
    ap = dict(applied)
    out = IDENTITY.copy()
    if "Affine" in ap:
        a = ap["Affine"]
        m, c = a["matrix"], np.array([size / 2 - 0.5] * 2)
        shift = np.round(m[:2, 2] - c + m[:2, :2] @ c)  # whole pixels (A.Affine truncates)
        out[:5] = a["rotate"], *((shift + 0.5 * np.sign(shift)) / size), a["scale"]["x"], a["scale"]["y"]
    if "RandomBrightnessContrast" in ap:
        out[5:7] = ap["RandomBrightnessContrast"]["alpha"], ap["RandomBrightnessContrast"]["beta"] / 255.0
    if "RandomGamma" in ap:
        out[7] = ap["RandomGamma"]["gamma"]
    if "CLAHE" in ap:
        out[8] = ap["CLAHE"]["clip_limit"]
    if "HorizontalFlip" in ap:
        out[9] = 1.0
    return out


def _batch(images: list[np.ndarray], params: np.ndarray, clahe: bool = True) -> np.ndarray:
    x = torch.from_numpy(np.stack(images)).unsqueeze(1)
    return apply_batch(x, torch.from_numpy(np.asarray(params)), clahe=clahe)[:, 0].numpy()


def test_draws_use_the_ranges_and_probabilities_of_the_preset() -> None:
    ref = {type(t).__name__: t for t in preset_compose(WIDE).transforms}
    n = 4000
    draws = np.stack([draw_params(WIDE, s) for s in range(n)])
    affine = ref["Affine"]
    ranges = {
        "angle": affine.rotate,
        "tx": affine.translate_percent["x"],
        "ty": affine.translate_percent["y"],
        "sx": affine.scale["x"],
        "sy": affine.scale["y"],
        "alpha": tuple(1 + v for v in ref["RandomBrightnessContrast"].contrast_limit),
        "beta": ref["RandomBrightnessContrast"].brightness_limit,
        "gamma": tuple(v / 100 for v in ref["RandomGamma"].gamma_limit),
        "clip": ref["CLAHE"].clip_limit,
    }
    applied = {
        "angle": draws[:, COL["sx"]] != 1,
        "alpha": draws[:, COL["alpha"]] != 1,
        "gamma": draws[:, COL["gamma"]] != 1,
        "clip": draws[:, COL["clip"]] > 0,
        "flip": draws[:, COL["flip"]] > 0,
    }
    probs = {
        "angle": affine.p,
        "alpha": ref["RandomBrightnessContrast"].p,
        "gamma": ref["RandomGamma"].p,
        "clip": ref["CLAHE"].p,
        "flip": ref["HorizontalFlip"].p,
    }
    for key, p in probs.items():
        assert abs(applied[key].mean() - p) < 4 * np.sqrt(p * (1 - p) / n), key
    group = {
        "angle": "angle",
        "tx": "angle",
        "ty": "angle",
        "sx": "angle",
        "sy": "angle",
        "alpha": "alpha",
        "beta": "alpha",
        "gamma": "gamma",
        "clip": "clip",
    }
    for key, (lo, hi) in ranges.items():
        v = draws[applied[group[key]], COL[key]]
        assert lo <= v.min() and v.max() <= hi, key
        assert v.min() - lo < 0.02 * (hi - lo) and hi - v.max() < 0.02 * (hi - lo), key  # the whole range is used
        # Uniform over the range, as Albumentations draws.
        assert ks_2samp(v, np.random.default_rng(1).uniform(lo, hi, len(v))).pvalue > 1e-3, key
    assert np.array_equal(draws[0], draw_params(WIDE, 0))  # a pure function of the seed


def test_cpu_path_is_the_albumentations_preset_pixel_for_pixel() -> None:
    image = _texture(96)
    compose = _compose(WIDE)
    for seed in range(60):
        compose.set_random_seed(seed)
        out = compose(image=image.copy())
        params = _compose_params(out["applied_transforms"], 96)
        assert np.array_equal(apply_cpu(image.copy(), params), out["image"]), seed


@pytest.mark.parametrize(
    "aug",
    [
        WIDE,
        Augment(),
        Augment(p=1.0, clahe=1.0, hflip=1.0),
        Augment(p=0.0),
        Augment(rotate_deg=0, shift=0, scale=0, brightness=0, contrast=0, gamma=(1, 1), p=1.0),
    ],
    ids=["wide", "default", "all", "none", "flat"],
)
def test_fast_path_is_the_seeded_compose_draw_for_draw_and_pixel_for_pixel(aug: Augment) -> None:
    """For a sample's seed, the fast path draws the numbers the Compose draws and gives its pixels."""
    image = _texture(80, seed=2)
    compose = _compose(aug)
    for seed in (*range(100), 2**31 - 2):
        seed_compose(compose, seed)
        out = compose(image=image.copy())
        drawn, params = _compose_params(out["applied_transforms"], 80), draw_params(aug, seed)
        exact = [COL[k] for k in ("angle", "sx", "sy", "alpha", "gamma", "clip", "flip")]
        assert np.array_equal(params[exact], drawn[exact]), seed  # the very numbers, not just close
        bc = dict(out["applied_transforms"]).get("RandomBrightnessContrast", {"beta": 0.0})
        assert params[COL["beta"]] * 255.0 == bc["beta"], seed  # Albumentations scales it by 255
        assert np.array_equal(np.trunc(params[1:3] * 80), np.trunc(drawn[1:3] * 80)), seed  # whole-pixel shifts
        assert np.array_equal(apply_cpu(image.copy(), params), out["image"]), seed
        assert np.array_equal(apply_compose(preset_compose(aug), image.copy(), seed), out["image"]), seed


def test_the_seeded_compose_draws_its_steps_independently() -> None:
    """One generator shared by the steps in order: with ``Compose.set_random_seed`` each step would get the same
    seed, and steps of one probability would all apply or none."""
    compose, image, n = _compose(Augment(p=0.5)), _texture(32), 2000
    applied = []
    for seed in range(n):
        seed_compose(compose, seed)
        applied.append({name for name, _ in compose(image=image.copy())["applied_transforms"]})
    alone = np.mean([a == {"Affine"} for a in applied])
    every = np.mean([a == {"Affine", "RandomBrightnessContrast", "RandomGamma"} for a in applied])
    se = np.sqrt(0.125 * 0.875 / n)
    assert abs(alone - 0.125) < 4 * se and abs(every - 0.125) < 4 * se


def test_affine_matrix_is_albumentations_formula() -> None:
    from albumentations.augmentations.geometric import functional as fgeometric

    draws = np.stack([draw_params(WIDE, s) for s in range(50)])
    batched = affine_matrices(torch.from_numpy(draws), 80, 120).numpy()
    for p, m in zip(draws, batched, strict=True):
        ref = fgeometric.create_affine_transformation_matrix(
            {"x": int(p[1] * 120), "y": int(p[2] * 80)},
            {"x": 0.0, "y": 0.0},
            {"x": p[3], "y": p[4]},
            p[0],
            fgeometric.center((80, 120)),
        )
        assert np.allclose(affine_matrix(p, 80, 120), ref[:2], atol=1e-9)
        assert np.allclose(m, ref[:2], atol=1e-9)


def test_device_path_matches_the_cpu_path_per_sample() -> None:
    image = _texture(64, seed=1)
    no_clahe = WIDE.model_copy(update={"clahe": 0.0, "p": 0.9})
    params = np.stack([draw_params(no_clahe, s) for s in range(48)])
    cpu = np.stack([apply_cpu(image.copy(), p) for p in params]).astype(int)
    dev = _batch([image] * len(params), params, clahe=False)
    diff = np.abs(cpu - dev)
    # Same tables, same geometry; only bilinear rounding (OpenCV's fixed point against float) differs.
    assert diff.max() <= 3 and (diff > 0).mean() < 1e-3
    unmoved = (params[:, :5] == IDENTITY[:5]).all(1)
    assert unmoved.any() and np.array_equal(cpu[unmoved], dev[unmoved])  # no warp: exactly the same

    with_clahe = Augment(rotate_deg=0, shift=0, scale=0, brightness=0, contrast=0, gamma=(1, 1), clahe=1.0, p=0)
    params = np.stack([draw_params(with_clahe, s) for s in range(8)])
    cpu = np.stack([apply_cpu(image.copy(), p) for p in params]).astype(int)
    dev = _batch([image] * len(params), params)
    # Kornia's CLAHE is OpenCV's up to half an interpolation step and rounding.
    assert np.abs(cpu - dev).mean() < 2.0 and np.abs(cpu - image).mean() > 4 * np.abs(cpu - dev).mean()


def test_device_path_is_deterministic_per_seed_whatever_the_batch() -> None:
    images = [_texture(48, seed=i) for i in range(6)]
    seeds = [11, 12, 13, 14, 15, 16]
    params = np.stack([draw_params(WIDE, s) for s in seeds])
    full = _batch(images, params)
    assert np.array_equal(full, _batch(images, params))
    order = [4, 1, 2]  # another batch, other neighbours, another order
    part = _batch([images[i] for i in order], params[order])
    assert all(np.array_equal(part[j], full[i]) for j, i in enumerate(order))
    other = _batch(images[:1], draw_params(WIDE, 99)[None])
    assert not np.array_equal(other[0], full[0])


def _dots(size: int, offset: int) -> np.ndarray:
    """Two bright dots at the centre +- ``offset`` along x: their axis gives the rotation, their midpoint the shift."""
    img = np.zeros((size, size), np.uint8)
    c = size // 2
    for dx in (-offset, offset):
        cv2.circle(img, (c + dx, c), 3, 255, -1)
    return img


def _angle_and_shift(img: np.ndarray) -> tuple[float, float, float]:
    """Rotation (degrees, Albumentations' sign) and shift (pixels) of the two-dot pattern."""
    _n, _lab, stats, cents = cv2.connectedComponentsWithStats((img > 64).astype(np.uint8))
    two = cents[1:][np.argsort(stats[1:, cv2.CC_STAT_AREA])[-2:]]
    left, right = sorted(two, key=lambda p: p[0])
    angle = -np.degrees(np.arctan2(right[1] - left[1], right[0] - left[0]))
    mid = (left + right) / 2 - (img.shape[0] - 1) / 2  # the pattern is centred on the pixel grid's centre
    return angle, mid[0], mid[1]


def test_rotation_and_shift_recovered_from_a_dot_pattern_match_the_reference() -> None:
    size, n = 97, 300
    aug = Augment(rotate_deg=20, shift=0.1, scale=0.1, brightness=0, contrast=0, gamma=(1, 1), p=1.0)
    image = _dots(size, 24)
    params = np.stack([draw_params(aug, s) for s in range(n)])
    dev = _batch([image] * n, params, clahe=False)
    ours = np.array([_angle_and_shift(t) for t in dev])
    # Each sample shows the parameters it drew, with Albumentations' signs and whole-pixel shifts.
    assert np.abs(ours[:, 0] - params[:, 0]).max() < 1.0
    assert np.abs(ours[:, 1] - np.trunc(params[:, 1] * size)).max() < 0.5
    assert np.abs(ours[:, 2] - np.trunc(params[:, 2] * size)).max() < 0.5
    compose = _compose(aug)
    ref = []
    for s in range(n):
        seed_compose(compose, 10_000 + s)
        ref.append(_angle_and_shift(compose(image=image.copy())["image"]))
    ref = np.array(ref)
    for k, name in enumerate(("angle", "shift x", "shift y")):
        assert ks_2samp(ours[:, k], ref[:, k]).pvalue > 1e-3, name
        assert abs(ours[:, k].std() - ref[:, k].std()) < 0.15 * ref[:, k].std(), name


def _fit_linear(src: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    keep = (out > 2) & (out < 253)
    alpha, beta = np.polyfit(src[keep], out[keep], 1)
    return alpha, beta / 255.0


def _fit_gamma(src: np.ndarray, out: np.ndarray) -> float:
    keep = (src > 20) & (out > 2)
    return float(np.polyfit(np.log(src[keep] / 255.0), np.log((out[keep] + 0.5) / 255.0), 1)[0])


@pytest.mark.parametrize("kind", ["brightness_contrast", "gamma"])
def test_brightness_contrast_and_gamma_recovered_from_a_ramp_match_the_reference(kind: str) -> None:
    n = 300
    still = dict(rotate_deg=0, shift=0, scale=0, p=1.0)
    if kind == "gamma":
        aug = Augment(brightness=0, contrast=0, gamma=(0.7, 1.3), **still)
    else:
        aug = Augment(brightness=0.2, contrast=0.2, gamma=(1, 1), **still)
    ramp = np.tile(np.arange(256, dtype=np.uint8), (4, 1))
    src = ramp.ravel().astype(float)

    def recover(img: np.ndarray) -> tuple[float, ...]:
        out = img.ravel().astype(float)
        return (_fit_gamma(src, out),) if kind == "gamma" else _fit_linear(src, out)

    params = np.stack([draw_params(aug, s) for s in range(n)])
    x = torch.from_numpy(np.repeat(ramp[None, None], n, axis=0))
    dev = apply_batch(x, torch.from_numpy(params), clahe=False)[:, 0].numpy()
    ours = np.array([recover(t) for t in dev])
    drawn = params[:, [COL["gamma"]]] if kind == "gamma" else params[:, [COL["alpha"], COL["beta"]]]
    assert np.abs(ours - drawn).max() < 0.02  # each sample shows what it drew
    # The Compose seeded with the same seeds draws the same numbers, and no warp runs here: the device path
    # gives its pixels exactly (its tables are Albumentations'), so what the ramp shows is the same too. (A
    # comparison of means over other seeds allowed 1.2 standard errors: about one chance in five to fail.)
    compose = preset_compose(aug)
    ref = np.stack([apply_compose(compose, ramp.copy(), s) for s in range(n)])
    assert np.array_equal(dev, ref)
    assert np.array_equal(ours, np.array([recover(t) for t in ref]))


def test_output_statistics_match_the_reference_on_an_image() -> None:
    image, n = _texture(64, seed=3), 300
    params = np.stack([draw_params(WIDE, s) for s in range(n)])
    dev = _batch([image] * n, params).reshape(n, -1).astype(float)
    # The Compose on other seeds: the same seeds would give the same draws, and the test would compare a
    # sample with itself.
    compose = preset_compose(WIDE)
    ref = np.array([apply_compose(compose, image.copy(), 5000 + s).ravel() for s in range(n)], dtype=float)
    for stat in (np.mean, np.std):
        assert ks_2samp(stat(dev, axis=1), stat(ref, axis=1)).pvalue > 1e-3, stat.__name__


def test_steps_are_drawn_independently() -> None:
    aug = Augment()
    # Enough draws that about 1,500 take all three steps, whatever the default p: the correlation bound below
    # is then about four standard errors of a correlation between independent draws.
    draws = np.stack([draw_params(aug, s) for s in range(round(1500 / aug.p**3))])
    affine, bc, gamma = draws[:, COL["sx"]] != 1, draws[:, COL["alpha"]] != 1, draws[:, COL["gamma"]] != 1
    # Each step on its own coin (Compose.set_random_seed per sample would apply all three or none).
    assert abs((affine & bc).mean() - aug.p**2) < 0.03 and abs((affine & bc & gamma).mean() - aug.p**3) < 0.03
    both = affine & bc & gamma
    corr = np.corrcoef(draws[both][:, [COL[k] for k in ("angle", "tx", "ty", "sx", "alpha", "beta", "gamma")]].T)
    assert np.abs(corr - np.eye(len(corr))).max() < 0.1


def test_the_backend_setting() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not on_device("auto", cpu) and on_device("auto", cuda)
    assert on_device("device", cpu) and not on_device("cpu", cuda)


def test_bad_batches_are_refused() -> None:
    with pytest.raises(ValueError, match="uint8 batch"):
        apply_batch(torch.zeros(2, 1, 8, 8), torch.zeros(2, len(PARAMS)))
    with pytest.raises(ValueError, match="parameters"):
        apply_batch(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.zeros(3, len(PARAMS)))


@pytest.mark.gpu
def test_device_path_on_cuda_matches_the_cpu_tensors() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    images = [_texture(64, seed=i) for i in range(16)]
    params = np.stack([draw_params(WIDE, s) for s in range(16)])
    x = torch.from_numpy(np.stack(images)).unsqueeze(1)
    on_gpu = apply_batch(x.cuda(), torch.from_numpy(params).cuda()).cpu()
    on_cpu = apply_batch(x, torch.from_numpy(params))
    assert (on_gpu.int() - on_cpu.int()).abs().max() <= 2


def test_augmentation_preview_grid(tmp_path) -> None:
    from cxr.core.sections import Augment
    from cxr.training.presets import preview_figure

    rng = np.random.default_rng(0)
    image = (rng.random((64, 64)) * 255).astype(np.uint8)
    aug = Augment(rotate_deg=20, p=1.0)
    fig = preview_figure(image, aug, n=5, seed=3)
    shown = [np.asarray(ax.images[0].get_array()) for ax in fig.axes if ax.images]
    assert len(shown) == 12  # two rows: the original, then 5 draws, by the CPU path and by the device path
    cpu, device = shown[:6], shown[6:]
    assert np.array_equal(cpu[0], image) and np.array_equal(device[0], image)
    assert all(not np.array_equal(t, image) for t in cpu[1:] + device[1:])  # p=1: every tile is changed
    # The same seed gives the same augmentation by both paths (bilinear rounding aside).
    assert all(np.abs(a.astype(int) - b).max() <= 3 for a, b in zip(cpu[1:], device[1:], strict=True))
    again = preview_figure(image, aug, n=5, seed=3)
    assert all(
        np.array_equal(np.asarray(a.images[0].get_array()), np.asarray(b.images[0].get_array()))
        for a, b in zip(fig.axes, again.axes, strict=True)
        if a.images
    )
    fig.savefig(tmp_path / "aug.png", dpi=60)
    assert (tmp_path / "aug.png").stat().st_size > 1024
    with pytest.raises(ValueError, match="2-D uint8"):
        preview_figure(image.astype(np.float32), aug)


def test_horizontal_flip_is_off_by_default() -> None:
    names = [type(t).__name__ for t in preset_compose(Augment()).transforms]
    assert "HorizontalFlip" not in names
    assert "HorizontalFlip" in [type(t).__name__ for t in preset_compose(Augment(hflip=0.5)).transforms]
