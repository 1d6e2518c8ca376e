"""Shortcut probes: re-encoding, and models built to read the format or the outside of the lungs are caught."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from cxr.data.manifest import Manifest
from cxr.evaluation.probes import FORMAT_DROP, image_format, reencode, shortcut_probes
from cxr.model.preprocess import GRAY_MEAN, GRAY_STD, decode

SIZE = 64
CLASSES = ("COVID", "Normal")


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def _jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def _lung_mask() -> np.ndarray:
    m = np.zeros((SIZE, SIZE), np.uint8)
    cv2.ellipse(m, (20, 32), (10, 20), 0, 0, 360, 255, -1)
    cv2.ellipse(m, (44, 32), (10, 20), 0, 0, 360, 255, -1)
    return m


def _raw(tmp_path: Path, images: dict[str, list[bytes]], masks: bool) -> tuple[Path, Manifest]:
    """A loose raw folder (``<FOLDER>/images``, ``<FOLDER>/masks``) and a test-only manifest."""
    raw = tmp_path / "raw"
    rows = []
    for cls, items in images.items():
        (raw / cls / "images").mkdir(parents=True)
        (raw / cls / "masks").mkdir(parents=True)
        for i, data in enumerate(items):
            ext = "png" if image_format(data) == "png" else "jpeg"
            name = f"{cls}-{i}.{ext}"
            (raw / cls / "images" / name).write_bytes(data)
            if masks:
                (raw / cls / "masks" / name).write_bytes(_png(_lung_mask()))
            rows.append(
                {
                    "path": f"{cls}/images/{name}",
                    "folder": cls,
                    "label": cls,
                    "split": "test",
                    "sha256": "",
                    "group": "",
                    "source": "",
                }
            )
    return raw, Manifest(tuple(rows))


class _Fixed(nn.Module):
    """A stand-in classifier: class 0 when ``score(x)`` exceeds ``t``, else class 1 (x is the model input)."""

    def __init__(self, score, t: float) -> None:
        super().__init__()
        self.score, self.t = score, t
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.score(x * GRAY_STD + GRAY_MEAN) - self.t
        return torch.stack([s, -s], 1) + 0 * self.dummy


def _roughness(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels."""
    return (x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2, 3))


def test_reencode_swaps_the_format_and_jpeg_to_png_is_lossless() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8)
    as_jpeg = reencode(_png(image))
    assert image_format(as_jpeg) == "jpeg"
    jpeg = _jpeg(image)
    as_png = reencode(jpeg)
    assert image_format(as_png) == "png"
    assert np.array_equal(decode(as_png, SIZE), decode(jpeg, SIZE))
    with pytest.raises(ValueError, match="broken"):
        reencode(b"not an image", "broken")


def test_a_model_that_reads_the_encoding_is_flagged(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    # Class 0, stored as PNG: flat grey with a faint one-pixel checkerboard, which JPEG quantises away.
    checker = (np.indices((SIZE, SIZE)).sum(0) % 2 * 2).astype(np.uint8)
    noisy = [(np.full((SIZE, SIZE), v, np.uint8) + checker) for v in rng.integers(60, 200, 12)]
    smooth = [np.full((SIZE, SIZE), v, np.uint8) for v in rng.integers(60, 200, 12)]  # class 1, stored as JPEG
    raw, test = _raw(tmp_path, {"COVID": [_png(n) for n in noisy], "Normal": [_jpeg(s) for s in smooth]}, False)
    as_png = _roughness(torch.from_numpy(np.stack(noisy)).float().div(255).unsqueeze(1)).mean()
    as_jpeg = _roughness(
        torch.from_numpy(np.stack([decode(reencode(_png(n)), SIZE) for n in noisy])).float().div(255).unsqueeze(1)
    ).mean()
    assert as_jpeg < as_png  # JPEG at quality 90 drops the faint pattern: the cue this model reads
    model = _Fixed(_roughness, float(as_jpeg + as_png) / 2)

    probes = shortcut_probes(model, test, CLASSES, raw, SIZE, batch_size=8)
    fmt = probes["format"]
    assert fmt["accuracy_original"] == 1.0
    assert fmt["by_format"]["png"]["accuracy"] <= 1.0 - FORMAT_DROP
    assert fmt["by_format"]["jpeg"]["changed"] == 0.0  # the lossless control
    assert fmt["shortcut"] and probes["shortcut"]
    assert "SHORTCUT" in fmt["verdict"] and "PNG" in fmt["verdict"]
    assert "lungs" not in probes and "no lung masks" in probes["summary"]


def _with_border(value: int, rng: np.random.Generator) -> np.ndarray:
    """Random lungs on a background whose brightness is the class cue."""
    image = np.full((SIZE, SIZE), value, np.uint8)
    lungs = _lung_mask() > 0
    image[lungs] = rng.integers(0, 255, int(lungs.sum()), dtype=np.uint8)
    return image


def test_a_model_that_reads_outside_the_lungs_is_flagged_and_one_that_reads_the_lungs_is_not(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    images = {
        "COVID": [_png(_with_border(200, rng)) for _ in range(8)],
        "Normal": [_png(_with_border(60, rng)) for _ in range(8)],
    }
    raw, test = _raw(tmp_path, images, True)
    corner = _Fixed(lambda x: x[:, 0, :4, :4].mean(dim=(1, 2)), 0.5)  # reads the top-left corner: no lung there
    probes = shortcut_probes(corner, test, CLASSES, raw, SIZE, batch_size=8)
    lungs = probes["lungs"]
    assert lungs["n"] == 16 and lungs["chance"] == 0.5
    assert lungs["accuracy_original"] == 1.0 and lungs["accuracy_lungs_blanked"] == 1.0
    assert lungs["shortcut"] and "SHORTCUT" in lungs["verdict"] and probes["shortcut"]

    # The cue inside the lungs, and a model that reads the centre of the left lung only.
    images = {
        "COVID": [_png(np.where(_lung_mask() > 0, 220, 100).astype(np.uint8)) for _ in range(8)],
        "Normal": [_png(np.where(_lung_mask() > 0, 30, 100).astype(np.uint8)) for _ in range(8)],
    }
    raw2, test2 = _raw(tmp_path / "b", images, True)
    centre = _Fixed(lambda x: x[:, 0, 28:36, 16:24].mean(dim=(1, 2)), 0.5)
    probes2 = shortcut_probes(centre, test2, CLASSES, raw2, SIZE, batch_size=8)
    lungs2 = probes2["lungs"]
    assert lungs2["accuracy_original"] == 1.0 and lungs2["accuracy_lungs_only"] == 1.0
    assert lungs2["accuracy_lungs_blanked"] == 0.5
    assert not lungs2["shortcut"] and "no lung shortcut" in lungs2["verdict"]


def test_the_report_section_says_shortcut_in_words() -> None:
    from cxr.reporting.report import _probes_section

    html = _probes_section(
        {
            "probes": {
                "shortcut": True,
                "summary": "SHORTCUT: re-encoding the PNG test images as JPEG drops their accuracy",
                "format": {
                    "n": 20,
                    "accuracy_original": 1.0,
                    "accuracy": 0.5,
                    "changed": 0.5,
                    "jpeg_quality": 90,
                    "threshold": 0.1,
                    "by_format": {
                        "png": {
                            "n": 10,
                            "reencoded_as": "jpeg",
                            "accuracy_original": 1.0,
                            "accuracy": 0.0,
                            "changed": 1.0,
                        }
                    },
                },
                "lungs": {
                    "n": 20,
                    "accuracy_original": 1.0,
                    "accuracy_lungs_only": 0.5,
                    "accuracy_lungs_blanked": 0.95,
                    "chance": 0.5,
                    "threshold": 0.5,
                },
            }
        }
    )
    assert 'class="warn"' in html and "SHORTCUT" in html and "lungs blanked" in html and "0.950" in html
    assert "No shortcut probes" in _probes_section({})
