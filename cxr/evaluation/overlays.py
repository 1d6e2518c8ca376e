"""Drawing maps over images: an overlay, a gallery per class, one figure per image at its own resolution."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import matplotlib.figure


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """(H,W) or (H,W,1|3) uint8 or float in [0,1] (or [0,255]) to (H,W,3) uint8 RGB."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be (H,W) or (H,W,3), got shape {np.asarray(image).shape}")
    if img.dtype != np.uint8:
        img = img.astype(np.float64)
        if img.size and np.nanmax(img) <= 1.0:
            img = img * 255.0
        img = np.clip(np.nan_to_num(img), 0, 255).round().astype(np.uint8)
    return img


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 RGB overlay of a (H,W) gray or (H,W,3) RGB image and a CAM in [0,1] (resized with cv2), jet colormap."""
    import cv2

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = _to_rgb_uint8(image)
    c = np.nan_to_num(np.asarray(cam, dtype=np.float32).squeeze())
    if c.ndim != 2:
        raise ValueError(f"cam must be 2-D, got shape {np.asarray(cam).shape}")
    if c.shape != img.shape[:2]:
        c = cv2.resize(c, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(np.uint8(np.clip(c, 0.0, 1.0) * 255), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    blended = (1.0 - alpha) * img.astype(np.float32) + alpha * heat.astype(np.float32)
    return np.clip(blended, 0, 255).round().astype(np.uint8)


def gallery(
    images: Sequence[np.ndarray],
    cams: Sequence[np.ndarray],
    titles: Sequence[str],
    ncols: int = 4,
    alpha: float = 0.45,
) -> matplotlib.figure.Figure:
    """Grid of CAM overlays with titles as a matplotlib Figure (no pyplot state); save with fig.savefig."""
    from matplotlib.figure import Figure

    if not (len(images) == len(cams) == len(titles)):
        raise ValueError(f"images ({len(images)}), cams ({len(cams)}) and titles ({len(titles)}) differ in length")
    if ncols < 1:
        raise ValueError("ncols must be >= 1")
    n = len(images)
    ncols = max(1, min(ncols, n)) if n else 1
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(3.0 * ncols, 3.2 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, img, cam, title in zip(axes, images, cams, titles, strict=False):  # more axes than images
        ax.imshow(overlay(img, cam, alpha=alpha))
        ax.set_title(str(title), fontsize=8)
    return fig


def cam_figure(image: np.ndarray, cam: np.ndarray, title: str, alpha: float = 0.45, dpi: int = 100):
    """One CAM overlay at the image's own resolution (one figure pixel per image pixel), a colour bar and a title.

    The axes are placed by hand in pixels rather than by a layout engine, which would rescale the
    image; save with ``fig.savefig(path, dpi=dpi)`` (no ``bbox_inches``) to keep that mapping.
    """
    from matplotlib import cm as colormaps
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    img = overlay(image, cam, alpha=alpha)
    h, w = img.shape[:2]
    top, gap, bar, ticks = 34, 12, 18, 56  # pixels: title band, gap, colour bar, its tick labels
    width, height = w + gap + bar + ticks, h + top + 8
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    ax = fig.add_axes((0, 8 / height, w / width, h / height))
    ax.imshow(img, interpolation="nearest")
    ax.set_axis_off()
    cax = fig.add_axes(((w + gap) / width, 8 / height, bar / width, h / height))
    fig.colorbar(colormaps.ScalarMappable(Normalize(0.0, 1.0), "jet"), cax=cax, label="Grad-CAM (normalised)")
    fig.text(0.5 * w / width, 1 - (top / 2) / height, title, ha="center", va="center", fontsize=10)
    return fig
