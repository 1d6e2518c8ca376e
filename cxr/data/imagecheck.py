"""Image validation: header checks, the pixel limit, a full decode, mode, alpha and size."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

from PIL import Image, ImageFile, JpegImagePlugin, PngImagePlugin, UnidentifiedImageError

from cxr.data.duplicates import pil_dhash, sha256_bytes

logger = logging.getLogger(__name__)

MIN_SIDE = 64
MAX_PIXELS = 25_000_000  # download.max_pixels's default


@dataclass(frozen=True)
class Inspection:
    """Result of decoding one file from its bytes."""

    reason: str | None
    sha256: str = ""
    dhash: int = 0
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    nbytes: int = 0


def _alpha_is_real(im: Image.Image) -> bool:
    """True when an image with an alpha channel (or tRNS) is not fully opaque."""
    if im.mode in ("RGBA", "LA"):
        return im.getchannel("A").getextrema()[0] < 255
    if "transparency" in im.info:
        return im.convert("RGBA").getchannel("A").getextrema()[0] < 255
    return False


def _blank_value(im: Image.Image) -> str | None:
    """The value of every pixel of an image that holds one value only (an opaque alpha aside), else None."""
    w, h = im.size
    # Nine pixels first (corners, edge middles, centre): they differ in any real image, and the full scan below
    # would add a tenth to the check of every image.
    if len({im.getpixel((x * (w - 1) // 2, y * (h - 1) // 2)) for x in range(3) for y in range(3)}) > 1:
        return None
    bands = im.getbands()
    extrema = im.getextrema() if len(bands) > 1 else (im.getextrema(),)
    colour = [lo_hi for band, lo_hi in zip(bands, extrema, strict=True) if band != "A"]
    if any(lo != hi for lo, hi in colour):
        return None
    values = [lo for lo, _ in colour]
    return str(values[0]) if len(set(values)) == 1 else str(tuple(values))


def _check_decoded(im: Image.Image, expect_mask: bool) -> str | None:
    """Reason a decoded image is unusable (mode, alpha, size, one value in every pixel), else None."""
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        return f"unsupported mode {mode} (16/32-bit; expected 8-bit L or RGB)"
    allowed = ("1", "L", "P", "RGB", "RGBA", "LA") if expect_mask else ("L", "RGB", "RGBA", "LA")
    if mode not in allowed:
        return f"unsupported mode {mode} (expected L or RGB)"
    if not expect_mask and _alpha_is_real(im):
        return f"unsupported mode {mode} with real transparency (alpha channel not fully opaque)"
    if min(im.size) < MIN_SIDE:
        return f"too small ({im.width}x{im.height}, need at least {MIN_SIDE} px a side)"
    if not expect_mask and (value := _blank_value(im)) is not None:
        # An all-black (or all-anything) frame: a failed export or a placeholder, no X-ray to learn from.
        return f"blank image: every pixel is {value}"
    return None


def _open_header(data: bytes) -> Image.Image:
    """Parse a PNG's or JPEG's header (nothing decoded yet); other content through ``Image.open``.

    PNG and JPEG go straight to their Pillow plugins, as ``Image.open`` would, without its
    decompression-bomb check: ``download.max_pixels`` is the limit here, checked by the caller from
    the header, and Pillow's own would only warn (or refuse, with its limit in the message) first.
    """
    fp = io.BytesIO(data)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return PngImagePlugin.PngImageFile(fp)
    if data.startswith(b"\xff\xd8\xff"):
        return JpegImagePlugin.JpegImageFile(fp)
    return Image.open(fp)


def inspect_bytes(
    data: bytes, expect_mask: bool = False, fingerprint: bool = True, max_pixels: int = MAX_PIXELS
) -> Inspection:
    """Validate an encoded image by a full decode of its bytes; hash it when valid."""
    if not data:
        return Inspection("empty file (0 bytes)")
    try:
        im = _open_header(data)
    except UnidentifiedImageError:
        return Inspection("not an image (unrecognised content)")
    except Exception as exc:  # PIL raises many kinds for corrupt headers
        return Inspection(f"not an image ({type(exc).__name__}: {exc})")
    with im:
        fmt = im.format or "?"
        if fmt not in ("PNG", "JPEG"):
            return Inspection(f"unsupported format {fmt} (expected PNG or JPEG)")
        if im.width * im.height > max_pixels:
            return Inspection(
                f"too large ({im.width}x{im.height} = {im.width * im.height:,} pixels, above "
                f"download.max_pixels = {max_pixels:,}); not decoded"
            )
        if fmt == "PNG" and data.rfind(b"IEND") < 0:
            return Inspection("truncated PNG (no IEND chunk)")
        if fmt == "JPEG" and not data.rstrip(b"\x00\r\n ")[-2:] == b"\xff\xd9":
            return Inspection("truncated JPEG (no end-of-image marker)")
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            logger.debug("PIL LOAD_TRUNCATED_IMAGES is on; relying on end-marker checks")
        try:
            im.load()
        except Exception as exc:  # truncated data, CRC errors, decompression bombs
            return Inspection(f"truncated or corrupt {fmt} ({type(exc).__name__}: {exc})")
        reason = _check_decoded(im, expect_mask)
        if reason:
            return Inspection(reason)
        # The same fingerprint as duplicates.fingerprint_bytes, from the decode already made here.
        dh = pil_dhash(im) if fingerprint else 0
        return Inspection(None, sha256_bytes(data), dh, im.width, im.height, im.mode, fmt, len(data))
