"""One synthetic chest-X-ray-like sample: anatomy, lesion, exposure and noise, as arrays.

Classes differ only inside the lungs.  Anatomy, exposure and noise are drawn
from class-independent distributions (from a generator separate from the
lesion's), and after the lesion is added the lung pixels are histogram-matched
to the lesion-free lung pixels of the same sample.  A lesion therefore only
rearranges intensities within the lungs: pixels outside the lungs and the
global histogram (mean, std, percentiles) carry no class information, and the
class is visible only through the spatial pattern inside the lungs:

* Normal: clear lungs.
* COVID: bilateral, peripheral, lower-zone ground-glass patches.
* Lung_Opacity: one compact dense consolidation in one lung.
* Viral Pneumonia: diffuse reticular texture, both lungs, mostly perihilar.

Work is done at about 150 px (anatomy is smooth) and upsampled, with
per-pixel grain added at full size; roughly 2-3 ms per 299 px sample.
:mod:`cxr.data.synthetic` writes samples as a dataset.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import cv2
import numpy as np

from cxr.data.synthanatomy import anatomy, lowfreq, ramp

SYNTHETIC_CLASSES: tuple[str, ...] = ("COVID", "Normal", "Lung_Opacity", "Viral Pneumonia")

MIN_SIZE = 64
_HIST_BINS = 1024
_LESION_MASK_FRACTION = 0.25  # lesion mask: smoothed contribution > fraction * max


# --------------------------------------------------------------------------- helpers


def check_size(size: int) -> None:
    """Refuse a size that is not an int of at least MIN_SIZE."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"size must be an int, got {size!r}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE}, got {size}")


def check_class(class_name: str) -> None:
    """Refuse a class the generator does not draw."""
    if class_name not in SYNTHETIC_CLASSES:
        raise ValueError(f"unknown class {class_name!r}; expected one of {list(SYNTHETIC_CLASSES)}")


def _rngs(class_name: str, index: int, seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Anatomy and lesion generators, seeded from (seed, crc32(class), index)."""
    key = [int(seed) & 0xFFFFFFFFFFFFFFFF, zlib.crc32(class_name.encode("utf-8")), int(index)]
    return np.random.default_rng(key + [0]), np.random.default_rng(key + [1])


def _work_size(size: int) -> int:
    """Resolution at which the (smooth) anatomy and lesions are rendered."""
    return size if size <= 160 else (size + 1) // 2


@lru_cache(maxsize=4)
def _grain_tile(size: int) -> np.ndarray:
    """A fixed N(0, 1) tile of 2*size x 2*size; per-image grain is a random crop of it."""
    tile = np.random.default_rng(0x5EED).standard_normal((2 * size, 2 * size), dtype=np.float32)
    tile.setflags(write=False)
    return tile


def _bump(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """(1 - r^2)_+^2 with r the elliptical radius: a cheap Gaussian-like blob."""
    r2 = ((x - np.float32(cx)) * np.float32(1.0 / rx)) ** 2
    r2 += ((y - np.float32(cy)) * np.float32(1.0 / ry)) ** 2
    np.subtract(1.0, r2, out=r2)
    np.clip(r2, 0.0, 1.0, out=r2)
    r2 *= r2
    return r2


def _pick(rng: np.random.Generator, region: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    idx = np.flatnonzero(region)
    if idx.size == 0:
        return None
    i = int(idx[rng.integers(idx.size)])
    return float(x.flat[i]), float(y.flat[i])


def _match_hist(src: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Histogram matching of the values `src` onto those of `ref` (same length, 1-D).

    Monotone, so spatial contrast is preserved; quantised to 1024 levels, so it
    costs two bincounts instead of sorts.
    """
    lo = float(min(src.min(), ref.min()))
    hi = float(max(src.max(), ref.max()))
    scale = (_HIST_BINS - 1) / max(hi - lo, 1e-6)
    centres = lo + np.arange(_HIST_BINS, dtype=np.float64) / scale
    q_src = ((src - np.float32(lo)) * np.float32(scale) + np.float32(0.5)).astype(np.intp)
    q_ref = ((ref - np.float32(lo)) * np.float32(scale) + np.float32(0.5)).astype(np.intp)
    np.clip(q_src, 0, _HIST_BINS - 1, out=q_src)
    np.clip(q_ref, 0, _HIST_BINS - 1, out=q_ref)
    h_src = np.bincount(q_src, minlength=_HIST_BINS).astype(np.float64)
    h_ref = np.bincount(q_ref, minlength=_HIST_BINS).astype(np.float64)
    cdf_src = (np.cumsum(h_src) - 0.5 * h_src) / src.size
    cdf_ref = (np.cumsum(h_ref) - 0.5 * h_ref) / ref.size
    nz = h_ref > 0
    lut = np.interp(cdf_src, cdf_ref[nz], centres[nz]).astype(np.float32)
    return lut[q_src]


def _up(a: np.ndarray, size: int, interp: int = cv2.INTER_LINEAR) -> np.ndarray:
    """a resized to size x size, or a itself when it is that size already."""
    return a if a.shape[0] == size else cv2.resize(a, (size, size), interpolation=interp)


# --------------------------------------------------------------------------- lesions and the sample


def _lesion(class_name: str, rng: np.random.Generator, a: dict, w: int) -> np.ndarray:
    """Lesion contribution in tissue units at work resolution: >= 0, zero outside the lungs."""
    x, y, lung = a["x"], a["y"], a["lung"]
    if class_name == "Normal":
        return np.zeros_like(lung)
    inner = lung > 0.6
    if class_name == "COVID":
        # bilateral, peripheral, lower-zone ground-glass opacities
        field = np.zeros_like(lung)
        for cx, cy, rx, _, _, _ in a["lungs"]:
            s = 1.0 if cx > 0 else -1.0
            region = inner & (y > np.float32(cy)) & (np.float32(s) * x > np.float32(abs(cx) + 0.1 * rx))
            for _ in range(int(rng.integers(2, 5))):
                p = _pick(rng, region, x, y) or _pick(rng, inner, x, y) or (cx, cy)
                r = rng.uniform(0.11, 0.19)
                np.maximum(field, _bump(x, y, p[0], p[1], r * rng.uniform(0.8, 1.2), r), out=field)
        field *= 0.65 + 0.35 * np.tanh(lowfreq(rng, w, 10))
        amp = rng.uniform(0.17, 0.30)
    elif class_name == "Lung_Opacity":
        # one focal dense consolidation: a compact blob in one lung, any zone
        p = _pick(rng, lung > 0.8, x, y) or _pick(rng, lung > 0.3, x, y) or a["lungs"][0][:2]
        r = rng.uniform(0.06, 0.11)
        rr = ((x - np.float32(p[0])) * np.float32(1.0 / (r * rng.uniform(0.8, 1.25)))) ** 2
        rr += ((y - np.float32(p[1])) * np.float32(1.0 / r)) ** 2
        rr += np.float32(0.25) * lowfreq(rng, w, 12)
        field = ramp(1.0 - rr, 0.35)
        amp = rng.uniform(0.18, 0.32)
    elif class_name == "Viral Pneumonia":
        # diffuse interstitial (reticular) pattern, both lungs, mostly perihilar
        n = lowfreq(rng, w, 40)
        net = ramp(1.0 - np.float32(2.2) * np.abs(n), 1.0)
        net *= net
        env = np.zeros_like(lung)
        for cx, cy, rx, ry, _, _ in a["lungs"]:
            s = 1.0 if cx > 0 else -1.0
            hx = cx - s * rng.uniform(0.2, 0.45) * rx
            hy = cy + rng.uniform(-0.1, 0.3) * ry
            np.maximum(env, _bump(x, y, hx, hy, rx * rng.uniform(1.1, 1.5), ry * rng.uniform(0.9, 1.2)), out=env)
        field = env * (np.float32(0.25) + net)
        amp = rng.uniform(0.16, 0.27)
    else:  # pragma: no cover - guarded by check_class
        raise ValueError(f"unknown class {class_name!r}")
    field *= np.float32(amp)
    field *= lung
    return field


def _lesion_mask(lesion: np.ndarray, lung_mask: np.ndarray, w: int, size: int) -> np.ndarray:
    """Where the lesion is, at full size (uint8 {0,255}): its smoothed contribution above a fraction of the peak."""
    lesion_mask = np.zeros((size, size), np.uint8)
    peak = float(lesion.max())
    if peak > 0.0:
        smooth = _up(cv2.GaussianBlur(lesion, (0, 0), max(0.7, w / 150.0)), size)
        m = (smooth > np.float32(_LESION_MASK_FRACTION * float(smooth.max()))) & lung_mask
        if not m.any():  # degenerate tiny lesion: fall back to the raw peak
            m = (_up(lesion, size) >= np.float32(0.5 * peak)) & lung_mask
        lesion_mask[m] = 255
    return lesion_mask


def render(class_name: str, index: int, seed: int, size: int = 299) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One sample: (image uint8 HxW, lung mask uint8 HxW {0,255}, lesion mask uint8 HxW {0,255}).

    A pure function of its arguments.
    """
    check_class(class_name)
    check_size(size)
    if int(index) < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    rng_a, rng_l = _rngs(class_name, index, seed)
    w = _work_size(size)

    # class-independent draws first: anatomy, exposure, noise
    a = anatomy(rng_a, w)
    gamma = rng_a.uniform(0.8, 1.25)
    contrast = rng_a.uniform(0.85, 1.15)
    bright = rng_a.uniform(-0.06, 0.06)
    blur = rng_a.uniform(0.3, 0.9) * w / 150.0
    grain_sd = np.float32(rng_a.uniform(0.008, 0.022))
    oy, ox = (int(v) for v in rng_a.integers(0, size, 2))
    mottle = np.float32(rng_a.uniform(0.01, 0.03)) * lowfreq(rng_a, w, 4)

    tissue = a["tissue"]
    lesion = _lesion(class_name, rng_l, a, w)
    lesioned = tissue + lesion

    # Inside the lungs (the lesion's support) the histogram of the lesioned
    # tissue is matched to that of the lesion-free tissue, so the lesion only
    # rearranges lung intensities: neither the pixels outside the lungs nor the
    # global histogram depend on the class.
    sup = a["lung"] > 0.0
    img = tissue.copy()
    img[sup] = _match_hist(lesioned[sup], tissue[sup])
    img -= np.float32(0.03)
    img *= np.float32(1.0 / 0.9)
    np.clip(img, 0.0, 1.0, out=img)
    img **= np.float32(gamma)
    img -= np.float32(0.5)
    img *= np.float32(contrast)
    img += np.float32(0.5 + bright)
    img = cv2.GaussianBlur(img, (0, 0), blur)
    img += mottle
    img = _up(img, size)
    img += grain_sd * _grain_tile(size)[oy : oy + size, ox : ox + size]
    np.clip(img, 0.0, 1.0, out=img)
    img *= 255.0
    img += 0.5
    image = img.astype(np.uint8)

    lung_mask = _up(a["lung"], size) > 0.15
    return image, lung_mask.astype(np.uint8) * 255, _lesion_mask(lesion, lung_mask, w, size)
