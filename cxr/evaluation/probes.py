"""Shortcut probes on the test split: does the accuracy survive a change of file format, and does it need the lungs?

Two probes, each a plain re-scoring of the test images after one controlled change:

* **format**: every test image re-encoded in the other format (a PNG as JPEG at quality 90, a JPEG as
  PNG) and scored again. Where each class comes from its own archive, the encoding (JPEG blocks,
  quantisation noise) can tell the classes apart better than the lungs do; a model that learned that
  loses accuracy on the re-encoded images. JPEG to PNG is lossless, so the pixels the model sees do not
  change: that half is a control and must give the same answers.
* **lungs** (only where the raw data has lung masks: the synthetic data, the Kaggle v5 release): the
  test images with everything outside the lungs blanked (set to 0, black), and with the lungs blanked.
  A model that still scores well without the lungs reads the disease from somewhere else (text
  markers, the body outline, the exposure, the patient's age).

Verdicts use the thresholds below and are written in plain words into the metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from cxr.data.manifest import Manifest
from cxr.data.masks import lung_mask_path, read_mask
from cxr.data.rawstore import RawStore
from cxr.model.cache import CachedImages
from cxr.model.preprocess import decode

log = logging.getLogger(__name__)

#: PNG test images are re-encoded as JPEG at this quality.
JPEG_QUALITY = 90
#: A format shortcut: the accuracy on the images of one original format falls by at least this much
#: (absolute) once they are re-encoded.
FORMAT_DROP = 0.10
#: A lung shortcut: with the lungs blanked, the model keeps at least this share of its accuracy above
#: chance (chance: always answering the test split's most frequent class).
LUNGS_BLANKED_KEEP = 0.5
#: A format group or a masked set smaller than this gets figures but no verdict.
MIN_IMAGES = 10


def image_format(data: bytes) -> str:
    """``png``, ``jpeg`` or ``other``, from the file's magic bytes (not its name)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    return "other"


def reencode(data: bytes, name: str = "<bytes>") -> bytes:
    """PNG bytes as JPEG at ``JPEG_QUALITY``; JPEG (or anything else OpenCV reads) as PNG."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"{name}: cannot be decoded as an image")
    if image_format(data) == "png":
        if image.dtype != np.uint8:  # JPEG holds 8 bits
            image = (image >> 8).astype(np.uint8) if image.dtype == np.uint16 else image.astype(np.uint8)
        if image.ndim == 3 and image.shape[2] == 4:
            image = image[:, :, :3]
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    else:
        ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"{name}: cannot be re-encoded")
    return buf.tobytes()


def _predict(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int) -> np.ndarray:
    from cxr.model.inference import predict

    loader = DataLoader(CachedImages(images, labels), batch_size=batch_size, shuffle=False)
    logits, _ = predict(model, loader, next(model.parameters()).device)
    return logits.argmax(1)


def _acc(pred: np.ndarray, labels: np.ndarray) -> float | None:
    return float((pred == labels).mean()) if len(labels) else None


@dataclass(frozen=True)
class ProbeImages:
    """The test images a probe re-scores: where they are stored, their manifest rows and labels, the input size."""

    store: RawStore
    rows: Sequence[dict[str, str]]
    labels: np.ndarray
    size: int


def format_probe(model: torch.nn.Module, test: ProbeImages, batch_size: int) -> dict:
    """Accuracy on the test images as stored and re-encoded in the other format, overall and per original format."""
    store, rows, labels, size = test.store, test.rows, test.labels, test.size
    formats, before, after = [], [], []
    for r in rows:
        data = store.read(r["path"])
        formats.append(image_format(data))
        before.append(decode(data, size, store.describe(r["path"])))
        after.append(decode(reencode(data, store.describe(r["path"])), size, store.describe(r["path"])))
    fmt = np.array(formats)
    p0 = _predict(model, np.stack(before), labels, batch_size)
    p1 = _predict(model, np.stack(after), labels, batch_size)
    by_format, drops = {}, []
    for f in sorted(set(formats)):
        sel = fmt == f
        a0, a1 = _acc(p0[sel], labels[sel]), _acc(p1[sel], labels[sel])
        by_format[f] = {
            "n": int(sel.sum()),
            "reencoded_as": "jpeg" if f == "png" else "png",
            "accuracy_original": a0,
            "accuracy": a1,
            "changed": float((p0[sel] != p1[sel]).mean()),
        }
        if sel.sum() >= MIN_IMAGES:
            drops.append(a0 - a1)
    drop = max(drops) if drops else None
    shortcut = drop is not None and drop >= FORMAT_DROP
    if drop is None:
        verdict = f"too few test images per format (under {MIN_IMAGES}) to judge"
    elif shortcut:
        worst = max(
            (f for f in by_format if by_format[f]["n"] >= MIN_IMAGES),
            key=lambda f: by_format[f]["accuracy_original"] - by_format[f]["accuracy"],
        )
        as_format = by_format[worst]["reencoded_as"].upper()
        verdict = (
            f"SHORTCUT: re-encoding the {worst.upper()} test images as {as_format} "
            f"drops their accuracy by {drop:.2f} (threshold {FORMAT_DROP:.2f}); the model reads the file "
            "encoding, not only the lungs"
        )
    else:
        verdict = (
            f"no format shortcut: re-encoding changes the accuracy of each format by less than "
            f"{FORMAT_DROP:.2f} (largest drop {drop:.2f})"
        )
    return {
        "n": len(rows),
        "jpeg_quality": JPEG_QUALITY,
        "accuracy_original": _acc(p0, labels),
        "accuracy": _acc(p1, labels),
        "changed": float((p0 != p1).mean()),
        "by_format": by_format,
        "max_drop": drop,
        "threshold": FORMAT_DROP,
        "shortcut": shortcut,
        "verdict": verdict,
    }


def lung_probe(model: torch.nn.Module, test: ProbeImages, batch_size: int) -> dict | None:
    """Accuracy with the outside of the lungs blanked and with the lungs blanked; None without lung masks."""
    store, rows, labels, size = test.store, test.rows, test.labels, test.size
    keep, images, masks = [], [], []
    for i, r in enumerate(rows):
        mask = read_mask(store, lung_mask_path(r), size)
        if mask is None or not mask.any():
            continue
        keep.append(i)
        images.append(decode(store.read(r["path"]), size, store.describe(r["path"])))
        masks.append(mask)
    if not keep:
        return None
    y = labels[np.array(keep)]
    x, m = np.stack(images), np.stack(masks)
    acc = _acc(_predict(model, x, y, batch_size), y)
    acc_lungs_only = _acc(_predict(model, np.where(m, x, 0).astype(np.uint8), y, batch_size), y)
    acc_blanked = _acc(_predict(model, np.where(m, 0, x).astype(np.uint8), y, batch_size), y)
    chance = float(np.bincount(y).max() / len(y))
    kept = (acc_blanked - chance) / (acc - chance) if acc - chance > 1e-9 else None
    if len(keep) < MIN_IMAGES or kept is None:
        shortcut, verdict = False, "too few masked test images, or no accuracy above chance, to judge"
    elif kept >= LUNGS_BLANKED_KEEP:
        shortcut = True
        verdict = (
            f"SHORTCUT: with the lungs blanked the model still scores {acc_blanked:.2f} (chance {chance:.2f}), "
            f"{kept:.0%} of its accuracy above chance (threshold {LUNGS_BLANKED_KEEP:.0%}); it reads the "
            "class from outside the lungs"
        )
    else:
        shortcut = False
        verdict = (
            f"no lung shortcut: with the lungs blanked the model keeps {max(kept, 0.0):.0%} of its accuracy "
            f"above chance (threshold {LUNGS_BLANKED_KEEP:.0%})"
        )
    return {
        "n": len(keep),
        "accuracy_original": acc,
        "accuracy_lungs_only": acc_lungs_only,
        "accuracy_lungs_blanked": acc_blanked,
        "chance": chance,
        "kept_above_chance": kept,
        "threshold": LUNGS_BLANKED_KEEP,
        "shortcut": shortcut,
        "verdict": verdict,
    }


def shortcut_probes(
    model: torch.nn.Module, test: Manifest, classes: Sequence[str], raw: Path, size: int, batch_size: int
) -> dict:
    """Both probes on the test split; ``shortcut`` is true when either finds one, ``summary`` says so in words."""
    labels = test.labels(classes)
    with RawStore(raw) as store:
        images = ProbeImages(store, test.rows, labels, size)
        out: dict = {"format": format_probe(model, images, batch_size)}
        lungs = lung_probe(model, images, batch_size)
    if lungs is not None:
        out["lungs"] = lungs
    found = [k for k in ("format", "lungs") if k in out and out[k]["shortcut"]]
    out["shortcut"] = bool(found)
    parts = [out["format"]["verdict"]]
    parts.append(lungs["verdict"] if lungs is not None else "no lung masks in the raw data: lung probe not run")
    out["summary"] = "; ".join(parts) + "."
    for k in found:
        log.warning("shortcut probe (%s): %s", k, out[k]["verdict"])
    return out
