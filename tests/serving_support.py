"""What the serving and registration tests share: a random-weight checkpoint, test images, a logged pyfunc model.

A test module imports the fixture by its function name (``store_fixture``) and asks for it as ``store``; see
tests/registry_support.py for why this is not a folder conftest.py.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cxr.model.networks import build_model

#: Deliberately not the params order, so a model that ignored the checkpoint's class order would be caught.
CLASSES = ["Normal", "COVID", "Viral Pneumonia"]


SIZE = 48


def make_checkpoint(path: Path, classes=CLASSES, size: int = SIZE, seed: int = 0) -> Path:
    """A random-weight checkpoint in the format cxr.train saves."""
    torch.manual_seed(seed)
    model = build_model("resnet18", len(classes), None)
    # Random heads give near-uniform outputs; scale the head so classes differ clearly.
    with torch.no_grad():
        model.fc.weight.mul_(5.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": model.state_dict(),
            "arch": "resnet18",
            "classes": list(classes),
            "image_size": size,
            "params": {},
            "epoch": 0,
            "val": {"val_accuracy": 0.5},
        },
        path,
    )
    return path


def make_images(folder: Path, n: int = 4, seed: int = 1) -> list[Path]:
    """Colour PNGs of different sizes (so decoding, gray conversion and resizing all take part)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = 40 + 17 * i, 64 + 5 * i
        yy, xx = np.mgrid[0:h, 0:w]
        bgr = np.stack([(xx * (3 + i)) % 256, (yy * (5 + i)) % 256, rng.integers(0, 256, (h, w))], -1).astype(np.uint8)
        path = folder / f"img{i}.png"
        cv2.imwrite(str(path), bgr)
        paths.append(path)
    return paths


def big_png(width: int, height: int) -> bytes:
    """A valid black gray PNG of ``width`` x ``height``, compressed row by row: 20000 x 20000 is 390 KB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte 0, then the row's pixels
    body = b"".join([*(packer.compress(row) for _ in range(height)), packer.flush()])
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.fixture(scope="module", name="store")
def store_fixture(module_tmp: Path) -> dict:
    """One pyfunc model (temperature 2) logged into a throw-away sqlite store."""
    import mlflow

    from cxr.serving.pyfunc import log_pyfunc

    root = module_tmp
    checkpoint = make_checkpoint(root / "best.pt")
    calibration = root / "calibration.json"
    calibration.write_text(json.dumps({"temperature": 2.0, "positive_class": "COVID", "threshold": 0.5}))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("t", artifact_location=(root / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=exp):
        info = log_pyfunc(checkpoint, calibration)
    model = mlflow.pyfunc.load_model(info.model_uri)
    return {
        "root": root,
        "checkpoint": checkpoint,
        "uri": uri,
        "model_uri": info.model_uri,
        "model": model,
        "images": make_images(root / "images"),
    }
