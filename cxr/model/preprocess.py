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


def decode(data: bytes | np.ndarray, size: int, name: str = "<bytes>") -> np.ndarray:
    """Encoded image bytes (PNG, JPEG) or an array to a ``size`` x ``size`` uint8 gray array."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ValueError(f"{name}: cannot be decoded as an image")
    else:
        image = np.asarray(data)
        if image.ndim == 3 and image.shape[2] == 3:
            image = image[:, :, ::-1]  # arrays from users are RGB; to_gray expects OpenCV's BGR
    return resize_square(to_gray(image), size)


def load_image(path: Path, size: int) -> np.ndarray:
    """Read and decode one image file at training resolution."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror})") from None
    return decode(data, size, str(path))


def to_input(batch: torch.Tensor, device: torch.device | str, channels_last: bool = False) -> torch.Tensor:
    """uint8 (B, 1, H, W) to the normalised float input of the model: the one place normalisation lives."""
    x = batch.to(device, non_blocking=True).float().div_(255.0).sub_(GRAY_MEAN).div_(GRAY_STD)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


#: ImageNet normalisation collapsed to one gray channel (the mean of the RGB statistics).
GRAY_MEAN: float = (0.485 + 0.456 + 0.406) / 3


GRAY_STD: float = (0.229 + 0.224 + 0.225) / 3
