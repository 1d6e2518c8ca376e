"""Measured explanations: what the pointing game can show at a given input size, on lesions with known masks.

Grad-CAM reads a block of stride s (32 for the last block), so a CAM at image_size S is an (S/s)^2 grid,
upsampled bilinearly: its peak always lands on a cell centre. When no cell centre falls inside the lesions, no
model, however good, beats chance on the pointing game. These tests pin that bound on the synthetic lesions,
so the image size of any explanation test or benchmark is chosen where the measurement can say something.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cxr.data.synthetic import render
from cxr.evaluation.localisation import pointing_game

LESION_CLASSES = ("COVID", "Lung_Opacity", "Viral Pneumonia")


def _lesions(size: int, per_class: int = 12, seed: int = 1) -> np.ndarray:
    """Binary lesion masks (N, size, size) of the synthetic lesion classes, as the Grad-CAM step resizes them."""
    masks = []
    for name in LESION_CLASSES:
        for i in range(per_class):
            lesion = render(name, i, seed, 299)[2]
            masks.append(cv2.resize(lesion, (size, size), interpolation=cv2.INTER_NEAREST) > 127)
    return np.stack(masks)


def _best_cell_hit_rate(masks: np.ndarray, stride: int = 32) -> float:
    """Pointing-game hit rate of an oracle CAM that peaks on the best grid cell of each image (an upper bound)."""
    size = masks.shape[1]
    cells = size // stride
    best = np.zeros(len(masks))
    for a in range(cells):
        for b in range(cells):
            grid = np.zeros((cells, cells), np.float32)
            grid[a, b] = 1.0
            cam = cv2.resize(grid, (size, size))  # what pytorch_grad_cam does to the layer's map
            hits = pointing_game(np.repeat(cam[None], len(masks), 0), masks)
            best = np.maximum(best, hits)
    return float(best.mean())


#: (128, 8): layer2's map at the size test_pointing.py trains at.
@pytest.mark.parametrize(
    ("size", "stride", "explainable"), [(64, 32, False), (96, 32, False), (160, 32, True), (128, 8, True)]
)
def test_pointing_game_needs_a_fine_enough_cam(size: int, stride: int, explainable: bool) -> None:
    masks = _lesions(size)
    chance = float(masks.reshape(len(masks), -1).mean(1).mean())  # what gradcam reports as pointing_game_chance
    bound = _best_cell_hit_rate(masks, stride)
    assert 0.005 < chance < 0.1
    if explainable:
        assert bound > 5 * chance
    else:
        assert bound < 3 * chance  # even a perfect model cannot pass a 3x-chance test at this size
