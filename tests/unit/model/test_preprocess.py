"""Decoding and normalisation, defined once: every grayscale mode, PNG and JPEG bytes, the gray ImageNet statistics."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cxr.model.preprocess import GRAY_MEAN, GRAY_STD, decode, to_gray, to_input


def test_to_gray_handles_every_mode() -> None:
    gray = np.full((70, 70), 100, np.uint8)
    assert to_gray(gray) is gray
    bgr = np.dstack([gray] * 3)
    assert np.array_equal(to_gray(bgr), gray)
    bgra = np.dstack([gray] * 3 + [np.full_like(gray, 255)])
    assert np.array_equal(to_gray(bgra), gray)
    sixteen = gray.astype(np.uint16) * 256
    assert np.array_equal(to_gray(sixteen), gray)


def test_decode_png_and_jpeg_bytes_to_square(tmp_path: Path) -> None:
    img = np.tile(np.arange(0, 250, 2, dtype=np.uint8), (100, 1))
    for ext in (".png", ".jpg"):
        ok, buf = cv2.imencode(ext, np.dstack([img] * 3))
        out = decode(buf.tobytes(), 64)
        assert out.shape == (64, 64) and out.dtype == np.uint8
    with pytest.raises(ValueError, match="broken.png"):
        decode(b"garbage", 64, "broken.png")


def test_normalisation_is_the_gray_imagenet_one() -> None:
    batch = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    x = to_input(batch, "cpu")
    assert x.dtype == torch.float32
    assert x[0].item() == pytest.approx((0 - GRAY_MEAN) / GRAY_STD)
    assert x[1].item() == pytest.approx((1 - GRAY_MEAN) / GRAY_STD)
    assert batch.dtype == torch.uint8 and batch[1].item() == 255  # input untouched
