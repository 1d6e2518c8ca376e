"""What the data tests share: the real sample beside the repository, small copies of it, made-up images, and the
planted faults each check must name.

Helper names are those they had in tests/data/test_ingest.py.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SAMPLE = SHARED / "cxr-sample"
CLASSES = ("COVID", "Normal", "Lung_Opacity", "Viral Pneumonia")

needs_sample = pytest.mark.skipif(
    not (SAMPLE / "manifest.csv").is_file(), reason=f"real CXR sample not found at {SAMPLE}"
)


def manifest() -> dict[str, str]:
    """relpath -> sha256 from the sample's manifest.csv."""
    with open(SAMPLE / "manifest.csv", newline="") as fh:
        return {row["relpath"]: row["sha256"] for row in csv.DictReader(fh)}


def png_bytes(arr: np.ndarray) -> bytes:
    """Encode an array as PNG (uint16 -> I;16, HxWx4 -> RGBA)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def xray_like(seed: int, size: int = 96) -> np.ndarray:
    """A random 8-bit grayscale image (not a real X-ray; used only where the sample is not needed)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size), dtype=np.uint8)


def small_dataset(root: Path, per_class: int = 3) -> Path:
    """Copy the first few sample images of every class into root (v5-like layout)."""
    for cls in CLASSES:
        src = sorted((SAMPLE / cls / "images").iterdir())[:per_class]
        (root / cls / "images").mkdir(parents=True)
        for p in src:
            shutil.copyfile(p, root / cls / "images" / p.name)
    return root


def _truncated_png() -> bytes:
    data = (SAMPLE / "Lung_Opacity" / "images" / "Lung_Opacity-1.png").read_bytes()
    return data[: len(data) // 2]


def _truncated_jpeg() -> bytes:
    src = sorted((SAMPLE / "Viral Pneumonia" / "images").iterdir())[0]
    data = src.read_bytes()
    return data[: len(data) // 2]


FAULTS = {
    "truncated.png": (_truncated_png, "truncated"),
    "truncated.jpeg": (_truncated_jpeg, "truncated"),
    "empty.png": (lambda: b"", "0 bytes"),
    "notes.png": (lambda: b"these are not pixels\n" * 20, "not an image"),
    "deep16.png": (lambda: png_bytes(xray_like(1).astype(np.uint16) * 257), "16"),
    "alpha.png": (
        lambda: png_bytes(np.dstack([np.stack([xray_like(2)] * 3, -1), xray_like(3)])),
        "transparen",
    ),
    "palette.png": (lambda: _encode(Image.fromarray(xray_like(4)).convert("P")), "mode P"),
    "tiny.png": (lambda: png_bytes(xray_like(5, size=32)), "too small"),
}


def _encode(im: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()
