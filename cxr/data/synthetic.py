"""Deterministic synthetic chest-X-ray-like dataset.

Writes a dataset in the layout of the Kaggle "COVID-19 Radiography Database"
(v5)::

    <out>/<CLASS>/images/<CLASS>-N.png    size x size, 8-bit grayscale
    <out>/<CLASS>/masks/<CLASS>-N.png     lung mask, 256 x 256, 0/255
    <out>/<CLASS>/lesions/<CLASS>-N.png   lesion mask, size x size, 0/255
    <out>/synthetic.json                  generator version, seed, size, counts

Every sample is a pure function of ``(class, index, seed, size)``: its random
generators are seeded from ``(seed, crc32(class), index)``, so the bytes
written do not depend on the number of workers or on the order of work.

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
per-pixel grain added at full size; roughly 2-3 ms per 299 px sample plus PNG
encoding.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import zlib
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

SYNTHETIC_CLASSES: tuple[str, ...] = ("COVID", "Normal", "Lung_Opacity", "Viral Pneumonia")

GENERATOR_VERSION = "1.0.0"
MASK_SIZE = 256  # lung masks in the real dataset are 256 x 256
MIN_SIZE = 64
# Fixed PNG parameters, so the encoded bytes are reproducible.  Z_RLE is both
# faster and smaller than the default strategy on these noisy images and flat masks.
PNG_COMPRESSION = 1
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
_HIST_BINS = 1024
_LESION_MASK_FRACTION = 0.25  # lesion mask: smoothed contribution > fraction * max
_CHUNK = 64  # samples per task when workers > 1


@dataclass(frozen=True)
class SyntheticSummary:
    root: Path
    counts: dict[str, int]  # images written per class
    size: int


# --------------------------------------------------------------------------- helpers


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"size must be an int, got {size!r}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE}, got {size}")


def _check_class(class_name: str) -> None:
    if class_name not in SYNTHETIC_CLASSES:
        raise ValueError(f"unknown class {class_name!r}; expected one of {list(SYNTHETIC_CLASSES)}")


def _rngs(class_name: str, index: int, seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Anatomy and lesion generators, seeded from (seed, crc32(class), index)."""
    key = [int(seed) & 0xFFFFFFFFFFFFFFFF, zlib.crc32(class_name.encode("utf-8")), int(index)]
    anatomy = np.random.default_rng(key + [0])
    lesion = np.random.default_rng(key + [1])
    return anatomy, lesion


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates in [-1, 1] (x: columns, y: rows)."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(c, c, indexing="ij")
    y.setflags(write=False)
    x.setflags(write=False)
    return x, y


def _lowfreq(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise, roughly N(0, 1) at `cells` x `cells` control points.

    Cubic upsampling to an intermediate grid, then linear to `size` (much faster
    than one large cubic upsampling, visually the same).
    """
    g = rng.standard_normal((cells, cells)).astype(np.float32)
    mid = min(size, cells * 4)
    g = cv2.resize(g, (mid, mid), interpolation=cv2.INTER_CUBIC)
    if mid != size:
        g = cv2.resize(g, (size, size), interpolation=cv2.INTER_LINEAR)
    return g


@lru_cache(maxsize=4)
def _grain_tile(size: int) -> np.ndarray:
    """A fixed N(0, 1) tile of 2*size x 2*size; per-image grain is a random crop of it."""
    tile = np.random.default_rng(0x5EED).standard_normal((2 * size, 2 * size), dtype=np.float32)
    tile.setflags(write=False)
    return tile


def _work_size(size: int) -> int:
    """Resolution at which the (smooth) anatomy and lesions are rendered."""
    return size if size <= 160 else (size + 1) // 2


def _ramp(a: np.ndarray, width: float) -> np.ndarray:
    """clip(a / width, 0, 1): a soft step that is 0 for a <= 0 and 1 for a >= width."""
    out = a * np.float32(1.0 / width)
    np.clip(out, 0.0, 1.0, out=out)
    return out


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


# --------------------------------------------------------------------------- rendering


def _anatomy(rng: np.random.Generator, w: int) -> dict:
    """Class-independent anatomy at work resolution `w`.

    Returns the tissue image, the soft lung field (1 inside, 0 outside), the
    rotated coordinates and the lung parameters (used to place lesions).
    """
    x0, y0 = _grid(w)
    theta = math.radians(rng.uniform(-4.0, 4.0))
    ct, st = np.float32(math.cos(theta)), np.float32(math.sin(theta))
    sx, sy = rng.uniform(-0.04, 0.04), rng.uniform(-0.05, 0.05)
    x = ct * x0 + st * y0 - np.float32(sx)
    y = -st * x0 + ct * y0 - np.float32(sy)
    ax = np.abs(x)

    # body: trunk with rounded shoulders and a neck; thickness profile ~ sqrt(1 - (x/hw)^2)
    bw = rng.uniform(0.80, 0.96)
    neck = rng.uniform(0.20, 0.27)
    ys = rng.uniform(-0.70, -0.55)  # shoulder line
    sh = rng.uniform(0.18, 0.28)  # shoulder roundness
    up = _ramp(np.float32(ys) - y, 1.0) * np.float32(1.0 / sh)
    hw = np.float32(bw) * np.sqrt(np.clip(1.0 - up * up, 0.0, 1.0))
    np.maximum(hw, np.float32(neck), out=hw)
    hw *= 1.0 - np.float32(0.1) * _ramp(y - np.float32(0.35), 0.65)  # waist
    r = ax / hw
    body = np.sqrt(np.clip(1.0 - r * r, 0.0, 1.0))
    body = np.minimum(body * np.float32(2.5), 1.0) * np.float32(0.55) + np.float32(0.45) * body

    # lungs: long tapering apex, wider base, domed diaphragm, irregular border
    scale = rng.uniform(0.92, 1.08)
    top = rng.uniform(-0.72, -0.58)
    height = rng.uniform(1.00, 1.18) * scale
    lung = np.zeros((w, w), np.float32)
    lungs = []
    border = _lowfreq(rng, w, 6)
    border_amp = np.float32(rng.uniform(0.06, 0.14))
    for s in (-1.0, 1.0):
        h = height * rng.uniform(0.96, 1.04)
        yt = top + rng.uniform(-0.03, 0.03)
        ye = yt + 0.72 * h  # widest level
        cx = s * rng.uniform(0.37, 0.43) * bw / 0.88
        rx = rng.uniform(0.23, 0.28) * scale * bw / 0.88
        if s < 0:  # patient's right lung slightly wider
            rx *= 1.04
        t = _ramp(y - np.float32(yt), ye - yt)
        rxe = np.float32(0.45 * rx) + np.float32(0.55 * rx) * np.sqrt(t)
        ry = np.where(y < np.float32(ye), np.float32(0.72 * h), np.float32(0.28 * h))
        d = ((x - np.float32(cx)) / rxe) ** 2 + ((y - np.float32(ye)) / ry) ** 2
        d += border_amp * border
        np.maximum(lung, _ramp(1.0 - d, 0.25), out=lung)
        lungs.append((cx, yt + 0.55 * h, rx, 0.5 * h, yt, ye + 0.28 * h))

    # mediastinum band and heart shadow (patient's left = image right)
    mw = rng.uniform(0.09, 0.13)
    medi = _ramp(np.float32(mw) - ax, 0.06) * _ramp(y - np.float32(top - 0.1), 0.3)
    lung_bot = max(l[5] for l in lungs)
    hx = rng.uniform(0.06, 0.13)
    hy = lung_bot - rng.uniform(0.22, 0.30)
    hrx, hry = rng.uniform(0.26, 0.33), rng.uniform(0.18, 0.24)
    heart = _ramp(1.0 - ((x - np.float32(hx)) * np.float32(1.0 / hrx)) ** 2
                  - ((y - np.float32(hy)) * np.float32(1.0 / hry)) ** 2, 0.3)
    np.maximum(medi, heart, out=medi)
    np.multiply(lung, 1.0 - medi, out=lung)

    # ribs: faint curved bands, sloping down laterally, only in the thorax
    spacing = rng.uniform(0.13, 0.17)
    curv = rng.uniform(0.3, 0.55)
    phase = (y - np.float32(curv) * (ax - np.float32(0.1)) ** 2) * np.float32(2.0 * math.pi / spacing)
    phase += np.float32(rng.uniform(0.0, 2.0 * math.pi))
    ribs = _ramp(np.cos(phase) - np.float32(0.3), 0.7)
    thorax = _ramp(np.float32(lung_bot + 0.05) - y, 0.15) * _ramp(np.float32(0.8) * hw - ax, 0.1)

    # vertebrae: faint periodic brightness behind the mediastinum
    vert = _ramp(np.float32(0.05) - np.abs(x), 0.03)
    vert *= 0.5 + 0.5 * np.cos(y * np.float32(2.0 * math.pi / rng.uniform(0.09, 0.12)))

    tissue = np.float32(0.06) + np.float32(rng.uniform(0.48, 0.58)) * body
    tissue += np.float32(rng.uniform(0.10, 0.16)) * medi
    tissue += np.float32(rng.uniform(0.03, 0.07)) * vert
    tissue += np.float32(rng.uniform(0.04, 0.08)) * ribs * thorax
    tissue -= np.float32(rng.uniform(0.26, 0.34)) * lung
    # vascular markings: faint branching lines fanning out from the hila
    vessels = _ramp(1.0 - np.float32(3.0) * np.abs(_lowfreq(rng, w, 16)), 1.0)
    vessels *= np.float32(rng.uniform(0.03, 0.06)) * _ramp(np.float32(0.95) - ax, 0.6) * lung
    tissue += vessels
    tissue *= 1.0 + np.float32(0.05) * _lowfreq(rng, w, 5)
    return {"x": x, "y": y, "tissue": tissue, "lung": lung, "lungs": lungs}


def _lesion(class_name: str, rng: np.random.Generator, a: dict, w: int) -> np.ndarray:
    """Lesion contribution in tissue units at work resolution: >= 0, zero outside the lungs."""
    x, y, lung = a["x"], a["y"], a["lung"]
    if class_name == "Normal":
        return np.zeros_like(lung)
    inner = lung > 0.6
    if class_name == "COVID":
        # bilateral, peripheral, lower-zone ground-glass opacities
        field = np.zeros_like(lung)
        for cx, cy, rx, ry, _, _ in a["lungs"]:
            s = 1.0 if cx > 0 else -1.0
            region = inner & (y > np.float32(cy)) & (np.float32(s) * x > np.float32(abs(cx) + 0.1 * rx))
            for _ in range(int(rng.integers(2, 5))):
                p = _pick(rng, region, x, y) or _pick(rng, inner, x, y) or (cx, cy)
                r = rng.uniform(0.11, 0.19)
                np.maximum(field, _bump(x, y, p[0], p[1], r * rng.uniform(0.8, 1.2), r), out=field)
        field *= 0.65 + 0.35 * np.tanh(_lowfreq(rng, w, 10))
        amp = rng.uniform(0.17, 0.30)
    elif class_name == "Lung_Opacity":
        # one focal dense consolidation: a compact blob in one lung, any zone
        p = _pick(rng, lung > 0.8, x, y) or _pick(rng, lung > 0.3, x, y) or a["lungs"][0][:2]
        r = rng.uniform(0.06, 0.11)
        rr = ((x - np.float32(p[0])) * np.float32(1.0 / (r * rng.uniform(0.8, 1.25)))) ** 2
        rr += ((y - np.float32(p[1])) * np.float32(1.0 / r)) ** 2
        rr += np.float32(0.25) * _lowfreq(rng, w, 12)
        field = _ramp(1.0 - rr, 0.35)
        amp = rng.uniform(0.18, 0.32)
    elif class_name == "Viral Pneumonia":
        # diffuse interstitial (reticular) pattern, both lungs, mostly perihilar
        n = _lowfreq(rng, w, 40)
        net = _ramp(1.0 - np.float32(2.2) * np.abs(n), 1.0)
        net *= net
        env = np.zeros_like(lung)
        for cx, cy, rx, ry, _, _ in a["lungs"]:
            s = 1.0 if cx > 0 else -1.0
            hx = cx - s * rng.uniform(0.2, 0.45) * rx
            hy = cy + rng.uniform(-0.1, 0.3) * ry
            np.maximum(env, _bump(x, y, hx, hy, rx * rng.uniform(1.1, 1.5), ry * rng.uniform(0.9, 1.2)), out=env)
        field = env * (np.float32(0.25) + net)
        amp = rng.uniform(0.16, 0.27)
    else:  # pragma: no cover - guarded by _check_class
        raise ValueError(f"unknown class {class_name!r}")
    field *= np.float32(amp)
    field *= lung
    return field


def _up(a: np.ndarray, size: int, interp: int = cv2.INTER_LINEAR) -> np.ndarray:
    return a if a.shape[0] == size else cv2.resize(a, (size, size), interpolation=interp)


def render(class_name: str, index: int, seed: int, size: int = 299) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One sample: (image uint8 HxW, lung mask uint8 HxW {0,255}, lesion mask uint8 HxW {0,255}).

    A pure function of its arguments.
    """
    _check_class(class_name)
    _check_size(size)
    if int(index) < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    rng_a, rng_l = _rngs(class_name, index, seed)
    w = _work_size(size)

    # class-independent draws first: anatomy, exposure, noise
    a = _anatomy(rng_a, w)
    gamma = rng_a.uniform(0.8, 1.25)
    contrast = rng_a.uniform(0.85, 1.15)
    bright = rng_a.uniform(-0.06, 0.06)
    blur = rng_a.uniform(0.3, 0.9) * w / 150.0
    grain_sd = np.float32(rng_a.uniform(0.008, 0.022))
    oy, ox = (int(v) for v in rng_a.integers(0, size, 2))
    mottle = np.float32(rng_a.uniform(0.01, 0.03)) * _lowfreq(rng_a, w, 4)

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
    lesion_mask = np.zeros((size, size), np.uint8)
    peak = float(lesion.max())
    if peak > 0.0:
        smooth = _up(cv2.GaussianBlur(lesion, (0, 0), max(0.7, w / 150.0)), size)
        m = (smooth > np.float32(_LESION_MASK_FRACTION * float(smooth.max()))) & lung_mask
        if not m.any():  # degenerate tiny lesion: fall back to the raw peak
            m = (_up(lesion, size) >= np.float32(0.5 * peak)) & lung_mask
        lesion_mask[m] = 255
    return image, lung_mask.astype(np.uint8) * 255, lesion_mask


# --------------------------------------------------------------------------- writing


def _png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr, _PNG_PARAMS)
    if not ok:  # pragma: no cover
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _write_one(out_dir: Path, class_name: str, index: int, seed: int, size: int) -> None:
    image, lung, lesion = render(class_name, index, seed, size)
    mask = cv2.resize(lung, (MASK_SIZE, MASK_SIZE), interpolation=cv2.INTER_AREA)
    mask = np.where(mask >= 128, 255, 0).astype(np.uint8)
    name = f"{class_name}-{index + 1}.png"
    base = out_dir / class_name
    (base / "images" / name).write_bytes(_png(image))
    (base / "masks" / name).write_bytes(_png(mask))
    (base / "lesions" / name).write_bytes(_png(lesion))


def _write_chunk(args: tuple[str, str, int, int, int, int]) -> int:
    out_dir, class_name, start, stop, seed, size = args
    root = Path(out_dir)
    for i in range(start, stop):
        _write_one(root, class_name, i, seed, size)
    return stop - start


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core; no nested thread pools


def _validate_counts(counts: Mapping[str, int]) -> dict[str, int]:
    clean: dict[str, int] = {}
    for name, n in counts.items():
        _check_class(name)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise ValueError(f"count for class {name!r} must be an int, got {n!r}")
        if n < 0:
            raise ValueError(f"count for class {name!r} must be >= 0, got {n}")
        clean[name] = int(n)
    return {c: clean[c] for c in SYNTHETIC_CLASSES if c in clean}


def generate(
    out_dir: Path,
    counts: Mapping[str, int],
    size: int = 299,
    seed: int = 0,
    workers: int = 1,
    progress: bool = False,
) -> SyntheticSummary:
    """Write the dataset under out_dir (see the module docstring for the layout)."""
    clean = _validate_counts(counts)
    _check_size(size)
    if int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out_dir)
    for name in clean:
        for sub in ("images", "masks", "lesions"):
            (out / name / sub).mkdir(parents=True, exist_ok=True)

    tasks = [
        (str(out), name, start, min(start + _CHUNK, n), int(seed), int(size))
        for name, n in clean.items()
        for start in range(0, n, _CHUNK)
    ]
    total = sum(clean.values())
    log.info("generating %d synthetic images (size=%d, seed=%d, workers=%d) under %s", total, size, seed, workers, out)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="synthetic", unit="img")
    try:
        if workers == 1 or len(tasks) <= 1:
            for t in tasks:
                done = _write_chunk(t)
                if bar is not None:
                    bar.update(done)
        else:
            # Spawned, not forked: a fork of a process whose OpenMP/torch threads are running can deadlock.
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                max_workers=min(int(workers), len(tasks)), initializer=_init_worker, mp_context=ctx
            ) as ex:
                for done in ex.map(_write_chunk, tasks):
                    if bar is not None:
                        bar.update(done)
    finally:
        if bar is not None:
            bar.close()

    meta = {
        "generator": "cxr.data.synthetic",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "size": int(size),
        "counts": clean,
    }
    (out / "synthetic.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    log.info("synthetic dataset written: %s", clean)
    return SyntheticSummary(root=out, counts=clean, size=int(size))
