"""Unit tests for cxr.evaluation.localisation (where a map looks, against a mask)."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.evaluation.localisation import energy_inside, iou_at_top, pointing_game


def _square_mask(h: int = 10, w: int = 10) -> np.ndarray:
    """A 10x10 mask with a 4x4 square of ones at rows/cols 2..5."""
    m = np.zeros((h, w), dtype=np.uint8)
    m[2:6, 2:6] = 1
    return m


def test_energy_and_pointing_known_answers() -> None:
    mask = _square_mask()
    inside = np.zeros((10, 10))
    inside[3, 3] = 1.0
    outside = np.zeros((10, 10))
    outside[8, 8] = 1.0
    half = np.zeros((10, 10))
    half[3, 3] = 1.0
    half[8, 8] = 1.0
    uniform = np.ones((10, 10))
    cams = np.stack([inside, outside, half, uniform, inside])
    masks = np.stack([mask, mask, mask, mask, np.zeros_like(mask)])
    e = energy_inside(cams, masks)
    np.testing.assert_allclose(e[:4], [1.0, 0.0, 0.5, 16 / 100])
    assert np.isnan(e[4])
    pg = pointing_game(cams, masks)
    np.testing.assert_array_equal(pg[:3], [1.0, 0.0, 1.0])
    assert np.isnan(pg[4])
    # tolerance: argmax at (7, 3) is 2 px below the mask's last row (5)
    near = np.zeros((1, 10, 10))
    near[0, 7, 3] = 1.0
    assert pointing_game(near, mask[None])[0] == 0.0
    assert pointing_game(near, mask[None], tolerance_px=2)[0] == 1.0


def test_masks_resized_to_cam() -> None:
    mask = np.kron(_square_mask(), np.ones((4, 4), dtype=np.uint8))  # 40x40 version of the same mask
    cam = np.zeros((1, 10, 10))
    cam[0, 3, 3] = 1.0
    assert energy_inside(cam, mask[None])[0] == pytest.approx(1.0)
    assert pointing_game(cam, mask[None])[0] == 1.0


def test_bump_inside_mask() -> None:
    h = w = 64
    yy, xx = np.mgrid[:h, :w]
    mask = ((yy - 40) ** 2 + (xx - 24) ** 2 <= 15**2).astype(np.uint8)
    cam = np.exp(-((yy - 40) ** 2 + (xx - 24) ** 2) / (2 * 4.0**2))
    assert pointing_game(cam[None], mask[None])[0] == 1.0
    assert energy_inside(cam[None], mask[None])[0] > 0.8
    assert iou_at_top(cam[None], mask[None], quantile=0.9)[0] > 0.4


def test_iou_at_top_known() -> None:
    mask = _square_mask()
    cam = mask.astype(float) + 0.01 * np.random.default_rng(0).random((10, 10)) * (1 - mask)
    # top 16% (quantile 0.84) of the CAM is exactly the 16-pixel square
    assert iou_at_top(cam[None], mask[None], quantile=0.84)[0] == pytest.approx(1.0)
    assert np.isnan(iou_at_top(cam[None], np.zeros((1, 10, 10)))[0])
