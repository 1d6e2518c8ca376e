"""The built-in augmentation steps applied fast: per image on the CPU, or to whole batches on the device.

``cxr.training.transforms.preset_compose`` (an Albumentations ``Compose``) is what trains; its built-in steps
(affine, brightness/contrast, gamma, CLAHE, horizontal flip, each with its own probability) are reproduced
here. ``draw_params`` draws what that ``Compose`` draws for a sample's seed (Albumentations' own sampling, in
its order, from the same generator), a pure function of the seed the sampler hands over, so resuming, the
number of loader workers and DDP sharding change nothing, and every path is the same augmentation:

- ``apply_cpu``: one uint8 image in a DataLoader worker: the OpenCV warp ``A.Affine`` runs and one lookup
  table holding Albumentations' brightness/contrast and gamma tables, without ``Compose``'s per-call
  overhead. The tests hold it to the seeded ``Compose`` pixel for pixel.
- ``apply_batch``: a uint8 batch on the training device. The warp and CLAHE are Kornia's
  (``warp_affine``, ``equalize_clahe``); brightness, contrast and gamma are Albumentations' uint8 lookup
  tables rebuilt per sample and applied with one gather, so they match the CPU path exactly.

Kornia's augmentation classes draw their parameters from the global torch generator per batch, which
cannot be seeded per sample; hence the parameters are drawn here and Kornia's functional ops apply them.
A transform outside the built-in steps runs only through the ``Compose``: ``choose_path`` decides which path
applies the augmentation, once, for the train step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np

from cxr.core.sections import ConfigError
from cxr.training.transforms import (
    CLAHE_CLIP,
    CLAHE_GRID,
    added_steps,
    apply_compose,
    check_extra,
    gamma_step,
    preset_compose,
)

if TYPE_CHECKING:
    import torch

    from cxr.core.sections import Augment

#: The parameter vector of one sample, in this order; a step that is not applied holds its identity value.
PARAMS: tuple[str, ...] = ("angle", "tx", "ty", "sx", "sy", "alpha", "beta", "gamma", "clip", "flip")
IDENTITY: np.ndarray = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0])


def draw_params(aug: Augment, seed: int) -> np.ndarray:
    """What ``preset_compose(aug)`` seeded with ``seed`` draws (float64, ``PARAMS`` order): its very numbers.

    Albumentations 2.0.8's sampling of the built-in steps, replayed from the Python generator
    ``transforms.seed_compose`` gives the ``Compose`` (they draw nothing from the NumPy one): ~10 us a
    sample, against ~50 us for calling the steps' own sampling methods. The tests hold it to the seeded
    ``Compose`` draw for draw.
    """
    r = random.Random(int(seed))
    r.random()  # Compose's own coin: drawn even at p=1

    def applies(p: float) -> bool:  # BasicTransform.should_apply
        return p >= 1 or (p > 0 and r.random() < p)

    out = IDENTITY.copy()
    if applies(aug.p):  # A.Affine: translate x, y (percent); shear x, y (fixed at 0); scale x, y; rotate
        s, k = aug.shift, aug.scale
        tx, ty = r.uniform(-s, s), r.uniform(-s, s)
        r.uniform(0.0, 0.0), r.uniform(0.0, 0.0)
        sx, sy = r.uniform(1 - k, 1 + k), r.uniform(1 - k, 1 + k)
        out[0:5] = r.uniform(-aug.rotate_deg, aug.rotate_deg), tx, ty, sx, sy
    if applies(aug.p):  # A.RandomBrightnessContrast: alpha = 1 + contrast, then beta = brightness (times 255)
        alpha = 1.0 + r.uniform(-aug.contrast, aug.contrast)
        out[5:7] = alpha, r.uniform(-aug.brightness, aug.brightness)
    if gamma_step(aug) and applies(aug.p):  # A.RandomGamma, its limits in percent
        out[7] = r.uniform(aug.gamma[0] * 100, aug.gamma[1] * 100) / 100.0
    if aug.clahe > 0 and applies(aug.clahe):
        out[8] = r.uniform(*CLAHE_CLIP)
    if aug.hflip > 0 and applies(aug.hflip):
        out[9] = 1.0
    return out


def geometric(params):
    """The same parameters with the intensity steps (brightness/contrast, gamma, CLAHE) at identity: what moves a
    sample's lung mask with it (NumPy ``(len(PARAMS),)`` or a torch batch ``(B, len(PARAMS))``, copied)."""
    out = params.copy() if isinstance(params, np.ndarray) else params.clone()
    for i in range(5, 9):
        out[..., i] = IDENTITY[i]
    return out


def affine_matrix(params: np.ndarray, height: int, width: int) -> np.ndarray:
    """The 2x3 pixel matrix (source to destination) of ``A.Affine`` for one sample (its formula, tested against it)."""
    angle, tx, ty, sx, sy = (float(v) for v in params[:5])
    rad = np.deg2rad(angle % 360)
    cos, sin = np.cos(rad), np.sin(rad)
    a = np.array([[cos * sx, sin * sy], [-sin * sx, cos * sy]])
    centre = np.array([width / 2 - 0.5, height / 2 - 0.5])
    # A.Affine truncates the shift to whole pixels.
    offset = centre + np.array([int(tx * width), int(ty * height)]) - a @ centre
    return np.hstack([a, offset[:, None]])


#: Albumentations' gamma ramp for uint8 (np.arange in steps of 1/255), kept so the tables agree to the last bit.
_RAMP: np.ndarray = np.arange(0, 256.0 / 255, 1.0 / 255)[:256]


def lut(params: np.ndarray) -> np.ndarray:
    """One 256-entry uint8 table: Albumentations' brightness/contrast table, then its gamma table."""
    alpha, beta, gamma = (float(v) for v in params[5:8])
    table = np.arange(256, dtype=np.uint8)
    if (alpha, beta) != (1.0, 0.0):  # albucore.multiply_add: float32, clipped, truncated
        table = np.clip(np.arange(256, dtype=np.float32) * alpha + beta * 255.0, 0, 255).astype(np.uint8)
    if gamma != 1.0:  # albumentations gamma_transform
        table = ((_RAMP**gamma) * 255).astype(np.uint8)[table]
    return table


def apply_cpu(image: np.ndarray, params: np.ndarray) -> np.ndarray:
    """The preset on one 2-D uint8 image with given parameters: one OpenCV warp, one table, as Albumentations does."""
    h, w = image.shape
    if tuple(params[:5]) != tuple(IDENTITY[:5]):
        # What A.Affine runs (bilinear, zero border); the tests hold it to A.Compose pixel for pixel.
        image = cv2.warpAffine(
            image,
            affine_matrix(params, h, w),
            (w, h),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
    if tuple(params[5:8]) != tuple(IDENTITY[5:8]):
        # Brightness/contrast then gamma as one lookup: both are per-level tables of a uint8 image.
        image = cv2.LUT(image, lut(params))
    if params[8] > 0:
        image = cv2.createCLAHE(clipLimit=float(params[8]), tileGridSize=CLAHE_GRID).apply(image)
    if params[9]:
        image = cv2.flip(image, 1)
    return image


def affine_matrices(params: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``affine_matrix`` for a batch: (B, len(PARAMS)) parameters to (B, 2, 3) matrices, float64 on their device."""
    import torch

    p = params.to(torch.float64)
    rad = torch.deg2rad(torch.remainder(p[:, 0], 360.0))
    cos, sin = torch.cos(rad), torch.sin(rad)
    sx, sy = p[:, 3], p[:, 4]
    # Rotation times scale, as in Albumentations' create_affine_transformation_matrix (about the pixel centre).
    a = torch.stack([torch.stack([cos * sx, sin * sy], -1), torch.stack([-sin * sx, cos * sy], -1)], -2)
    # Python scalars only: a tensor made from host data would be a copy that waits for the device.
    cx, cy = width / 2 - 0.5, height / 2 - 0.5
    offset = torch.stack(
        [
            cx + torch.trunc(p[:, 1] * width) - (a[:, 0, 0] * cx + a[:, 0, 1] * cy),
            cy + torch.trunc(p[:, 2] * height) - (a[:, 1, 0] * cx + a[:, 1, 1] * cy),
        ],
        -1,
    )
    return torch.cat([a, offset.unsqueeze(-1)], -1)


_RAMPS: dict[str, torch.Tensor] = {}


def _luts(params: torch.Tensor) -> torch.Tensor:
    """``lut`` for a batch, on the parameters' device: (B, 256) float tables."""
    import torch

    device = params.device
    if str(device) not in _RAMPS:  # copied once per device: a copy each step would wait for the device
        _RAMPS[str(device)] = torch.from_numpy(_RAMP).to(device)
    alpha, beta, gamma = (params[:, i : i + 1] for i in (5, 6, 7))
    levels = torch.arange(256, device=device, dtype=torch.float32)
    bc = (levels * alpha.float() + (beta * 255.0).float()).clamp_(0, 255).trunc_()
    bc = torch.where((alpha == 1) & (beta == 0), levels, bc)
    g = (_RAMPS[str(device)] ** gamma.to(torch.float64) * 255.0).trunc_().to(torch.float32)
    g = torch.where(gamma == 1, levels, g)
    return torch.gather(g, 1, bc.long())


def apply_batch(images: torch.Tensor, params: torch.Tensor, clahe: bool = True) -> torch.Tensor:
    """The preset on a uint8 batch (B, 1, H, W) with per-sample parameters (B, len(PARAMS)), on their device.

    ``clahe=False`` (the preset's CLAHE probability is 0) skips the CLAHE check, which would wait for the device.
    """
    import torch
    from kornia.enhance import equalize_clahe
    from kornia.geometry.transform import warp_affine

    if images.ndim != 4 or images.shape[1] != 1 or images.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 batch (B, 1, H, W), got {tuple(images.shape)} {images.dtype}")
    if params.shape != (images.shape[0], len(PARAMS)):
        raise ValueError(f"expected parameters ({images.shape[0]}, {len(PARAMS)}), got {tuple(params.shape)}")
    b, _, h, w = images.shape
    params = params.to(images.device)
    x = images.float()
    # Every sample is warped (no branch that would wait for the device); unmoved ones keep their exact pixels.
    moved = (params[:, 0] != 0) | (params[:, 1] != 0) | (params[:, 2] != 0) | (params[:, 3] != 1) | (params[:, 4] != 1)
    m = affine_matrices(params, h, w).float()
    warped = warp_affine(x, m, (h, w), mode="bilinear", padding_mode="zeros", align_corners=True)
    # OpenCV writes uint8: round to the nearest level.
    x = torch.where(moved.view(b, 1, 1, 1), warped.round_().clamp_(0, 255), x)
    tables = _luts(params)
    x = torch.gather(tables, 1, x.view(b, -1).long()).view(b, 1, h, w)
    chosen = torch.nonzero(params[:, 8] > 0).flatten().tolist() if clahe else []
    if chosen:
        # Kornia takes one clip limit per call; CLAHE is off in the default preset.
        for i, clip in zip(chosen, params[chosen, 8].tolist(), strict=True):
            equalised = equalize_clahe(x[i : i + 1] / 255.0, clip_limit=clip, grid_size=CLAHE_GRID)
            x[i : i + 1] = (equalised * 255.0).round_()
    flip = params[:, 9] > 0
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    return x.clamp_(0, 255).to(torch.uint8)


def on_device(backend: str, device: torch.device) -> bool:
    """Whether ``train.augment_backend`` puts augmentation on the training device (``auto``: when it is a GPU)."""
    if backend == "auto":
        return device.type == "cuda"
    return backend == "device"


@dataclass(frozen=True)
class AugmentPath:
    """Which path applies the train augmentation (``fast``, ``compose`` or ``device``), and why, in words."""

    name: Literal["fast", "compose", "device"]
    why: str


def choose_path(aug: Augment, backend: str, device: torch.device, size: int = 64) -> AugmentPath:
    """Where and by what the train augmentation runs: the one place that decides it.

    Only the built-in steps: on the device when ``on_device`` says so (Kornia, whole batches), else the fast
    CPU path (``apply_cpu``, the faster of the two CPU paths in ``make bench``, with the ``Compose``'s draws
    and pixels). Any other step (``train.augment.extra``, or one added to ``preset_compose``): the whole
    ``Compose`` in the loader workers; ``device`` is then refused (Kornia runs the built-in steps only) and
    ``auto`` stays on the CPU. Bad extra steps stop here (``ConfigError`` naming the key), ``size`` being the
    training image size they are tried on.
    """
    check_extra(aug, size)
    added = added_steps(preset_compose(aug), aug)
    if not added:
        if on_device(backend, device):
            return AugmentPath("device", f"the built-in steps on {device.type}, on whole batches (Kornia)")
        return AugmentPath("fast", "the built-in steps in the loader workers, by the fast CPU path (apply_cpu)")
    steps = ", ".join(added)
    if backend == "device":
        raise ConfigError(
            f"train.augment_backend 'device' runs only the built-in augmentation steps (Kornia), and the "
            f"augmentation also holds {steps}: set train.augment_backend to cpu or auto"
        )
    why = f"the Albumentations Compose in the loader workers, for {steps} besides the built-in steps"
    if on_device(backend, device):
        why += f" (augment_backend auto stays off {device.type}: the device path runs the built-in steps only)"
    return AugmentPath("compose", why)


def preview_figure(image: np.ndarray, augment: Augment, n: int = 6, seed: int = 0):
    """The original 2-D uint8 image and ``n`` seeded draws of the train augmentations, by both paths.

    Top row: the CPU path (loader workers): ``apply_cpu``, or the whole ``Compose`` when it holds more than the
    built-in steps; bottom row: the device path (whole batches, ``apply_batch``, run here on CPU tensors),
    which applies the built-in steps only. Column ``i`` uses the sample seed ``seed + i`` in both rows, as
    training would for that sample.
    """
    import torch
    from matplotlib.figure import Figure

    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 image, got shape {image.shape} and dtype {image.dtype}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got n={n}")
    params = np.stack([draw_params(augment, seed + i) for i in range(n)])
    compose = preset_compose(augment)
    added = added_steps(compose, augment)
    if added:
        cpu = [apply_compose(compose, image.copy(), seed + i) for i in range(n)]
    else:
        cpu = [apply_cpu(image.copy(), p) for p in params]
    batch = torch.from_numpy(np.repeat(image[None, None], n, axis=0))
    device = apply_batch(batch, torch.from_numpy(params), clahe=augment.clahe > 0)[:, 0].numpy()
    fig = Figure(figsize=(2.0 * (n + 1), 4.6), layout="constrained")
    axes = fig.subplots(2, n + 1, squeeze=False)
    names = ("CPU: Compose", "device: built-ins only") if added else ("CPU path", "device path")
    for row, (name, tiles) in enumerate(zip(names, (cpu, list(device)), strict=True)):
        titled = [("original", image)] + [(f"{name} #{i + 1}", t) for i, t in enumerate(tiles)]
        for col, (title, tile) in enumerate(titled):
            ax = axes[row, col]
            ax.axis("off")
            ax.imshow(tile, cmap="gray", vmin=0, vmax=255)
            ax.set_title(title, fontsize=8)
    fig.suptitle(
        f"Train augmentations, the same seeds by both paths (p={augment.p}, rotate ±{augment.rotate_deg}°, "
        f"shift ±{augment.shift}, scale ±{augment.scale}, brightness ±{augment.brightness}, "
        f"contrast ±{augment.contrast}, gamma {augment.gamma[0]}-{augment.gamma[1]}, clahe p={augment.clahe}, "
        f"hflip p={augment.hflip}{'; then ' + ', '.join(added) if added else ''})",
        fontsize=8,
    )
    return fig
