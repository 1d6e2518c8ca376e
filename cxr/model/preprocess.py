"""Decoding and normalisation: any image file or array to the model's gray input, defined once."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch


def to_gray(image: np.ndarray) -> np.ndarray:
    """Any decoded image (gray, RGB, RGBA, 8 or 16 bit) as 2-D uint8: the one place grayscale is handled."""
    if image.ndim == 3:
        if image.shape[2] == 4:
            image = image[:, :, :3]
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.shape[2] == 3 else image[:, :, 0]
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        lo, hi = float(image.min()), float(image.max())
        image = np.zeros(image.shape, np.uint8) if hi <= lo else ((image - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    return image


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D uint8 image to ``size`` x ``size`` (area interpolation when shrinking)."""
    if image.shape == (size, size):
        return image
    shrink = image.shape[0] > size or image.shape[1] > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


#: The largest image decoded for a prediction, in pixels, when the model says nothing else: ``download.max_pixels``'s
#: default, the limit ingestion applies (cxr/core/sections.py, cxr/data/imagecheck.py; a test holds the three equal).
#: The served model cannot import those: it loads no configuration or ingestion code.
MAX_PIXELS = 25_000_000

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: JPEG start-of-frame markers (SOF0..SOF15 but DHT, JPG and DAC): the frame header holds the image's size.
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: JPEG markers without a length: TEM and the restart markers RST0..RST7.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, walking its segments from the start; None if none is found.

    Anything but a well-formed run of segments up to the frame header is None: the decoder would skip stray
    bytes and could then find another frame header, so what is not read here is not decoded either.
    """
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in _JPEG_STANDALONE:
            i += 2
            continue
        if marker in (0xD8, 0xD9, 0xDA):  # another start of image, end of image, start of scan: no frame yet
            return None
        if marker in _JPEG_FRAMES:
            if i + 9 > n:
                return None
            height, width = int.from_bytes(data[i + 5 : i + 7], "big"), int.from_bytes(data[i + 7 : i + 9], "big")
            return (width, height) if width and height else None
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2:
            return None
        i += 2 + length
    return None


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG or JPEG from its header, nothing decoded; None for other or damaged content."""
    if data.startswith(_PNG_SIGNATURE):
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        return (width, height) if width and height else None
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg_size(data)
    return None


def check_pixels(width: int, height: int, name: str, max_pixels: int) -> None:
    """Refuse an image of more than ``max_pixels`` pixels, naming it and both numbers."""
    if width * height > max_pixels:
        raise ValueError(
            f"{name}: too large ({width}x{height} = {width * height:,} pixels, above the limit of "
            f"{max_pixels:,}); not decoded"
        )


def decode(data: bytes | np.ndarray, size: int, name: str = "<bytes>", max_pixels: int | None = None) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG) or an array to a ``size`` x ``size`` uint8 gray array.

    With ``max_pixels``, bytes are decoded only when their header is a PNG's or a JPEG's and gives a size within
    it (a small file can claim a huge image: 452 KB of PNG decode to 400 million pixels); arrays are held to it too.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
        if max_pixels is not None:
            dims = header_size(data)
            if dims is None:
                raise ValueError(f"{name}: cannot be decoded as an image (not a PNG or JPEG with a readable header)")
            check_pixels(*dims, name, max_pixels)
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ValueError(f"{name}: cannot be decoded as an image")
    else:
        image = np.asarray(data)
        if max_pixels is not None and image.ndim >= 2:
            check_pixels(image.shape[1], image.shape[0], name, max_pixels)
        if image.ndim == 3 and image.shape[2] == 3:
            image = image[:, :, ::-1]  # arrays from users are RGB; to_gray expects OpenCV's BGR
    return resize_square(to_gray(image), size)


def load_image(path: Path, size: int, max_pixels: int | None = None) -> np.ndarray:
    """Read and decode one image file at training resolution (no larger than ``max_pixels`` when given)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror})") from None
    return decode(data, size, str(path), max_pixels)


def to_input(batch: torch.Tensor, device: torch.device | str, channels_last: bool = False) -> torch.Tensor:
    """uint8 (B, 1, H, W) to the normalised float input of the model: the one place normalisation lives."""
    x = batch.to(device, non_blocking=True).float().div_(255.0).sub_(GRAY_MEAN).div_(GRAY_STD)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


#: ImageNet normalisation collapsed to one gray channel (the mean of the RGB statistics).
GRAY_MEAN: float = (0.485 + 0.456 + 0.406) / 3


GRAY_STD: float = (0.229 + 0.224 + 0.225) / 3
