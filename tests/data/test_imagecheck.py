"""Image checks on planted faults and on the real sample: each bad file named with its reason, a too-large image
refused from its header before any decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ingest_support import (
    CLASSES,
    FAULTS,
    SAMPLE,
    _encode,
    manifest,
    needs_sample,
    png_bytes,
    small_dataset,
    xray_like,
)
from PIL import Image

from cxr.data.imagecheck import MAX_PIXELS, inspect_bytes
from cxr.data.ingest import ingest
from cxr.data.layout import DataError


def validate_image(path: Path, expect_mask: bool = False, max_pixels: int = MAX_PIXELS) -> str | None:
    """Fully decode an image file; return the reason it is bad, or None when it is a usable PNG/JPEG."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    return inspect_bytes(data, expect_mask, fingerprint=False, max_pixels=max_pixels).reason


@needs_sample
@pytest.mark.parametrize("name", sorted(FAULTS))
def test_validate_image_reasons(tmp_path: Path, name: str) -> None:
    make, reason = FAULTS[name]
    path = tmp_path / name
    path.write_bytes(make())
    got = validate_image(path)
    assert got is not None and reason in got


@needs_sample
def test_validate_image_accepts_real_and_opaque(tmp_path: Path) -> None:
    for row in list(manifest())[::25]:
        assert validate_image(SAMPLE / row) is None, row
    opaque = np.dstack([np.stack([xray_like(6)] * 3, -1), np.full((96, 96), 255, np.uint8)])
    (tmp_path / "opaque.png").write_bytes(png_bytes(opaque))
    assert validate_image(tmp_path / "opaque.png") is None
    (tmp_path / "gray.jpg").write_bytes(_encode(Image.fromarray(xray_like(7)), "JPEG", quality=90))
    assert validate_image(tmp_path / "gray.jpg") is None
    (tmp_path / "mask.png").write_bytes(_encode(Image.fromarray(xray_like(8) > 128)))
    assert validate_image(tmp_path / "mask.png", expect_mask=True) is None
    assert "unreadable" in validate_image(tmp_path / "missing.png")


@needs_sample
def test_image_above_max_pixels_refused_from_its_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    from PIL import ImageFile

    data = small_dataset(tmp_path / "src", 2)
    big = data / "Normal" / "images" / "Normal-big.png"
    im = Image.new("L", (10_000, 10_000))  # 100 Mpx: above Pillow's own warning limit, 100 kB on disk
    im.putpixel((0, 0), 255)  # not blank: accepted once the limit allows its size
    im.save(big)

    def no_decode(self):
        raise AssertionError(f"decoded {self.size}")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # Pillow's check must not run first
        assert "download.max_pixels" in validate_image(big)
        monkeypatch.undo()
        with pytest.raises(DataError, match=r"Normal/images/Normal-big.png: too large \(10000x10000 .*max_pixels"):
            ingest(data, tmp_path / "dest", CLASSES, policy="fail")
        assert not (tmp_path / "dest").exists()
        report = ingest(data, tmp_path / "dest", CLASSES, policy="skip")
    assert [b.path for b in report.bad] == ["Normal/images/Normal-big.png"]
    assert report.counts["Normal"] == 2
    assert validate_image(big, max_pixels=10_000 * 10_000) is None
    jpeg = next((data / "Viral Pneumonia" / "images").glob("*.jpeg"))  # the limit reads JPEG headers too
    assert "224x224 = 50,176 pixels, above download.max_pixels = 40,000" in validate_image(jpeg, max_pixels=200 * 200)
