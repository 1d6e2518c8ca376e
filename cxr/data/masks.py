"""The masks the raw data holds beside its images: lung masks (the Kaggle v5 layout) and, in the synthetic data,
lesion masks; read at a given size."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from cxr.data.rawstore import RawStore

log = logging.getLogger(__name__)


def lung_mask_path(row: dict[str, str]) -> str:
    """Where the raw data keeps the lung mask of a manifest row (the Kaggle v5 layout)."""
    return f"{row['folder']}/masks/{Path(row['path']).name}"


def lesion_mask_path(row: dict[str, str]) -> str:
    """Where the synthetic data keeps the lesion mask of a manifest row (none in the real dataset)."""
    return f"{row['folder']}/lesions/{Path(row['path']).name}"


def read_mask(store: RawStore, rel: str, size: int) -> np.ndarray | None:
    """The boolean mask stored at ``rel`` (e.g. ``<FOLDER>/masks/<name>``) at ``size``, or None when there is none."""
    if not store.exists(rel):
        return None
    # Stored pixel order, as images are decoded (cv2.IMREAD_UNCHANGED ignores EXIF orientation; IMREAD_GRAYSCALE
    # alone would apply it, turning a tagged mask against its image).
    flags = cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION
    m = cv2.imdecode(np.frombuffer(store.read(rel), np.uint8), flags)
    if m is None:
        log.warning("%s: mask cannot be decoded, ignored", store.describe(rel))
        return None
    return cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST) > 127
