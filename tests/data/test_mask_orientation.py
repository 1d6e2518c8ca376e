"""A lung mask is read in the pixel order it is stored in, as its image is: an EXIF orientation tag turns neither,
so a tagged JPEG mask still lies on its image."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from cxr.data.masks import read_mask
from cxr.data.rawstore import RawStore

EXIF_ORIENTATION = 0x0112


def tagged_jpeg(arr: np.ndarray, orientation: int) -> bytes:
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[EXIF_ORIENTATION] = orientation  # 6: shown turned 90 degrees clockwise
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif, quality=95)
    return buf.getvalue()


def test_an_exif_orientation_tag_turns_neither_mask_nor_image(tmp_path: Path) -> None:
    # Lungs on the left half of a wide frame; the tag would put them on the top half.
    lungs = np.zeros((64, 96), np.uint8)
    lungs[:, :48] = 255
    data = tagged_jpeg(lungs, 6)
    for sub in ("images", "masks"):
        (tmp_path / "COVID" / sub).mkdir(parents=True)
        (tmp_path / "COVID" / sub / "COVID-1.jpg").write_bytes(data)

    mask = read_mask(RawStore(tmp_path), "COVID/masks/COVID-1.jpg", 32)
    assert mask is not None and mask.shape == (32, 32)
    assert mask[:, :14].all() and not mask[:, 18:].any()  # the left half, as stored (JPEG edges aside)

    # The image, decoded as the model decodes it (cv2.IMREAD_UNCHANGED), keeps the same pixel order.
    from cxr.model.preprocess import decode

    image = decode(data, 32) > 127
    assert image[:, :14].all() and not image[:, 18:].any()
