"""Where a map looks, measured against a mask: the share of its energy inside, the pointing game, IoU at the top.

Each score takes CAMs (B, h, w) and binary masks (B, H, W) (masks are resized to the CAM size with
nearest-neighbour interpolation) and returns one float per image, NaN where the mask is empty (or the score is
otherwise undefined).
"""

from __future__ import annotations

import numpy as np


def _prepare(cams: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return float64 CAMs (B,h,w) and bool masks resized (nearest) to (B,h,w)."""
    import cv2

    c = np.asarray(cams, dtype=np.float64)
    m = np.asarray(masks)
    if c.ndim == 2:
        c = c[None]
    if m.ndim == 2:
        m = m[None]
    if c.ndim != 3 or m.ndim != 3 or c.shape[0] != m.shape[0]:
        raise ValueError(f"expected cams (B,h,w) and masks (B,H,W), got {c.shape} and {m.shape}")
    h, w = c.shape[1:]
    mb = m > 0
    if mb.shape[1:] != (h, w):
        mb = np.stack([cv2.resize(x.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0 for x in mb])
    return np.nan_to_num(c), mb


def energy_inside(cams: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per image share of (non-negative) CAM energy inside the mask; NaN where the mask or the CAM is empty."""
    c, m = _prepare(cams, masks)
    c = np.clip(c, 0.0, None)
    total = c.sum(axis=(1, 2))
    inside = (c * m).sum(axis=(1, 2))
    out = np.full(c.shape[0], np.nan)
    ok = (m.any(axis=(1, 2))) & (total > 0)
    out[ok] = inside[ok] / total[ok]
    return out


def pointing_game(cams: np.ndarray, masks: np.ndarray, tolerance_px: int = 0) -> np.ndarray:
    """Per image 1.0/0.0: the CAM's argmax falls in the mask (dilated by tolerance_px); NaN where the mask is empty."""
    import cv2

    if tolerance_px < 0:
        raise ValueError("tolerance_px must be >= 0")
    c, m = _prepare(cams, masks)
    out = np.full(c.shape[0], np.nan)
    kernel = None
    if tolerance_px > 0:
        size = 2 * int(tolerance_px) + 1
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    for i in range(c.shape[0]):
        if not m[i].any():
            continue
        mask = m[i]
        if kernel is not None:
            mask = cv2.dilate(mask.astype(np.uint8), kernel) > 0
        r, col = np.unravel_index(int(np.argmax(c[i])), c[i].shape)
        out[i] = float(mask[r, col])
    return out


def iou_at_top(cams: np.ndarray, masks: np.ndarray, quantile: float = 0.8) -> np.ndarray:
    """IoU between the CAM's top (1-quantile) region (cam >= its quantile) and the mask; NaN where the mask is empty."""
    if not 0.0 <= quantile < 1.0:
        raise ValueError(f"quantile must be in [0, 1), got {quantile}")
    c, m = _prepare(cams, masks)
    thr = np.quantile(c.reshape(c.shape[0], -1), quantile, axis=1)
    top = c >= thr[:, None, None]
    inter = (top & m).sum(axis=(1, 2)).astype(np.float64)
    union = (top | m).sum(axis=(1, 2)).astype(np.float64)
    out = np.full(c.shape[0], np.nan)
    ok = m.any(axis=(1, 2))
    out[ok] = inter[ok] / union[ok]
    return out
