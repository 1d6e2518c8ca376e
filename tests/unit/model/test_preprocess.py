"""Decoding and normalisation, defined once: every grayscale mode, PNG and JPEG bytes, the size from the header and
the pixel limit, the gray ImageNet statistics."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from serving_support import big_png

from cxr.model import preprocess
from cxr.model.preprocess import GRAY_MEAN, GRAY_STD, decode, header_size, to_gray, to_input


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


def _encoded(ext: str, height: int, width: int, *flags: int) -> bytes:
    ok, buf = cv2.imencode(ext, np.full((height, width, 3), 90, np.uint8), list(flags))
    assert ok
    return buf.tobytes()


def test_the_size_is_read_from_the_header() -> None:
    assert header_size(_encoded(".png", 70, 130)) == (130, 70)
    assert header_size(_encoded(".jpg", 70, 130)) == (130, 70)
    assert header_size(_encoded(".jpg", 70, 130, cv2.IMWRITE_JPEG_PROGRESSIVE, 1)) == (130, 70)
    assert header_size(big_png(20000, 20000)[:40]) == (20000, 20000)  # the header alone is enough
    # A JPEG whose metadata holds another JPEG (an EXIF thumbnail): the image's own frame counts.
    jpeg = _encoded(".jpg", 700, 900)
    thumbnail = _encoded(".jpg", 7, 9)
    app1 = b"\xff\xe1" + (len(thumbnail) + 8).to_bytes(2, "big") + b"Exif\0\0" + thumbnail
    assert header_size(jpeg[:2] + app1 + jpeg[2:]) == (900, 700)
    # Not PNG or JPEG, or not a readable header: no size.
    ok, bmp = cv2.imencode(".bmp", np.zeros((8, 8), np.uint8))
    for data in (b"", b"garbage", bmp.tobytes(), b"\xff\xd8\xff garbage", _encoded(".png", 70, 130)[:20]):
        assert header_size(data) is None, data[:20]
    assert header_size(jpeg[:2] + b"\xff\xda\x00\x08" + jpeg[2:]) is None  # image data before any frame header


def test_an_image_above_the_limit_is_refused_from_its_header(monkeypatch) -> None:
    """452 KB of PNG can decode to 400 million pixels: refused with both numbers, and never handed to the decoder."""
    big = big_png(20000, 20000)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(preprocess.cv2, "imdecode", no_decoding)
    with pytest.raises(
        ValueError, match=r"^image\[3\]: too large \(20000x20000 = 400,000,000 pixels, above the limit of 25,000,000\)"
    ):
        decode(big, 64, "image[3]", max_pixels=25_000_000)
    with pytest.raises(ValueError, match=r"image\[0\]: too large \(65x64 = 4,160 pixels, above the limit of 4,096\)"):
        decode(np.zeros((64, 65), np.uint8), 32, "image[0]", max_pixels=64 * 64)
    with pytest.raises(ValueError, match=r"x.bmp: cannot be decoded as an image \(not a PNG or JPEG"):
        decode(cv2.imencode(".bmp", np.zeros((8, 8), np.uint8))[1].tobytes(), 64, "x.bmp", max_pixels=100)
    monkeypatch.undo()
    assert decode(_encoded(".png", 64, 64), 32, max_pixels=64 * 64).shape == (32, 32)  # at the limit: decoded
    assert decode(np.zeros((64, 64), np.uint8), 32, max_pixels=64 * 64).shape == (32, 32)


def test_the_default_limit_is_the_ingestions() -> None:
    """The served model cannot import the settings or the ingestion code: its default is a copy, held equal here."""
    from cxr.core.sections import Download
    from cxr.data.imagecheck import MAX_PIXELS

    assert preprocess.MAX_PIXELS == MAX_PIXELS == Download().max_pixels == 25_000_000


def test_normalisation_is_the_gray_imagenet_one() -> None:
    batch = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    x = to_input(batch, "cpu")
    assert x.dtype == torch.float32
    assert x[0].item() == pytest.approx((0 - GRAY_MEAN) / GRAY_STD)
    assert x[1].item() == pytest.approx((1 - GRAY_MEAN) / GRAY_STD)
    assert batch.dtype == torch.uint8 and batch[1].item() == 255  # input untouched
