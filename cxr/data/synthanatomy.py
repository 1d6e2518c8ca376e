"""The class-independent chest of a synthetic sample, and the smooth fields it is drawn with.

:func:`anatomy` draws body, lungs, mediastinum and heart, ribs, vertebrae and
vessels at work resolution from one generator; :mod:`cxr.data.synthrender`
adds a class's lesion and the exposure, drawing the lesions with the same
``lowfreq`` and ``ramp``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates in [-1, 1] (x: columns, y: rows)."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(c, c, indexing="ij")
    y.setflags(write=False)
    x.setflags(write=False)
    return x, y


def lowfreq(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
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


def ramp(a: np.ndarray, width: float) -> np.ndarray:
    """clip(a / width, 0, 1): a soft step that is 0 for a <= 0 and 1 for a >= width."""
    out = a * np.float32(1.0 / width)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _pose(rng: np.random.Generator, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Patient coordinates (x, y): the pixel grid, slightly rotated and shifted."""
    x0, y0 = _grid(w)
    theta = math.radians(rng.uniform(-4.0, 4.0))
    ct, st = np.float32(math.cos(theta)), np.float32(math.sin(theta))
    sx, sy = rng.uniform(-0.04, 0.04), rng.uniform(-0.05, 0.05)
    x = ct * x0 + st * y0 - np.float32(sx)
    y = -st * x0 + ct * y0 - np.float32(sy)
    return x, y


def _body(rng: np.random.Generator, ax: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Trunk with rounded shoulders and a neck: (thickness, half-width at each row, trunk width).

    The thickness profile is ~ sqrt(1 - (x/hw)^2).
    """
    bw = rng.uniform(0.80, 0.96)
    neck = rng.uniform(0.20, 0.27)
    ys = rng.uniform(-0.70, -0.55)  # shoulder line
    sh = rng.uniform(0.18, 0.28)  # shoulder roundness
    up = ramp(np.float32(ys) - y, 1.0) * np.float32(1.0 / sh)
    hw = np.float32(bw) * np.sqrt(np.clip(1.0 - up * up, 0.0, 1.0))
    np.maximum(hw, np.float32(neck), out=hw)
    hw *= 1.0 - np.float32(0.1) * ramp(y - np.float32(0.35), 0.65)  # waist
    r = ax / hw
    body = np.sqrt(np.clip(1.0 - r * r, 0.0, 1.0))
    body = np.minimum(body * np.float32(2.5), 1.0) * np.float32(0.55) + np.float32(0.45) * body
    return body, hw, bw


def _lungs(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, w: int, bw: float
) -> tuple[np.ndarray, list[tuple[float, ...]], float]:
    """Soft lung field (long tapering apex, wider base, domed diaphragm, irregular border), each lung's parameters
    (cx, cy, rx, ry, top, bottom) and the apex level."""
    scale = rng.uniform(0.92, 1.08)
    top = rng.uniform(-0.72, -0.58)
    height = rng.uniform(1.00, 1.18) * scale
    lung = np.zeros((w, w), np.float32)
    lungs = []
    border = lowfreq(rng, w, 6)
    border_amp = np.float32(rng.uniform(0.06, 0.14))
    for s in (-1.0, 1.0):
        h = height * rng.uniform(0.96, 1.04)
        yt = top + rng.uniform(-0.03, 0.03)
        ye = yt + 0.72 * h  # widest level
        cx = s * rng.uniform(0.37, 0.43) * bw / 0.88
        rx = rng.uniform(0.23, 0.28) * scale * bw / 0.88
        if s < 0:  # patient's right lung slightly wider
            rx *= 1.04
        t = ramp(y - np.float32(yt), ye - yt)
        rxe = np.float32(0.45 * rx) + np.float32(0.55 * rx) * np.sqrt(t)
        ry = np.where(y < np.float32(ye), np.float32(0.72 * h), np.float32(0.28 * h))
        d = ((x - np.float32(cx)) / rxe) ** 2 + ((y - np.float32(ye)) / ry) ** 2
        d += border_amp * border
        np.maximum(lung, ramp(1.0 - d, 0.25), out=lung)
        lungs.append((cx, yt + 0.55 * h, rx, 0.5 * h, yt, ye + 0.28 * h))
    return lung, lungs, top


def _mediastinum(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, ax: np.ndarray, top: float, lung_bot: float
) -> np.ndarray:
    """Mediastinum band and heart shadow (patient's left = image right)."""
    mw = rng.uniform(0.09, 0.13)
    medi = ramp(np.float32(mw) - ax, 0.06) * ramp(y - np.float32(top - 0.1), 0.3)
    hx = rng.uniform(0.06, 0.13)
    hy = lung_bot - rng.uniform(0.22, 0.30)
    hrx, hry = rng.uniform(0.26, 0.33), rng.uniform(0.18, 0.24)
    heart = ramp(
        1.0 - ((x - np.float32(hx)) * np.float32(1.0 / hrx)) ** 2 - ((y - np.float32(hy)) * np.float32(1.0 / hry)) ** 2,
        0.3,
    )
    np.maximum(medi, heart, out=medi)
    return medi


def _ribs(
    rng: np.random.Generator, y: np.ndarray, ax: np.ndarray, hw: np.ndarray, lung_bot: float
) -> tuple[np.ndarray, np.ndarray]:
    """Faint curved rib bands sloping down laterally, and the thorax that confines them."""
    spacing = rng.uniform(0.13, 0.17)
    curv = rng.uniform(0.3, 0.55)
    phase = (y - np.float32(curv) * (ax - np.float32(0.1)) ** 2) * np.float32(2.0 * math.pi / spacing)
    phase += np.float32(rng.uniform(0.0, 2.0 * math.pi))
    ribs = ramp(np.cos(phase) - np.float32(0.3), 0.7)
    thorax = ramp(np.float32(lung_bot + 0.05) - y, 0.15) * ramp(np.float32(0.8) * hw - ax, 0.1)
    return ribs, thorax


def _vertebrae(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Faint periodic brightness behind the mediastinum."""
    vert = ramp(np.float32(0.05) - np.abs(x), 0.03)
    vert *= 0.5 + 0.5 * np.cos(y * np.float32(2.0 * math.pi / rng.uniform(0.09, 0.12)))
    return vert


def anatomy(rng: np.random.Generator, w: int) -> dict:
    """Class-independent anatomy at work resolution `w`.

    Returns the tissue image, the soft lung field (1 inside, 0 outside), the
    rotated coordinates and the lung parameters (used to place lesions).
    The parts draw from `rng` in a fixed order: the order is part of the output.
    """
    x, y = _pose(rng, w)
    ax = np.abs(x)
    body, hw, bw = _body(rng, ax, y)
    lung, lungs, top = _lungs(rng, x, y, w, bw)
    lung_bot = max(p[5] for p in lungs)
    medi = _mediastinum(rng, x, y, ax, top, lung_bot)
    np.multiply(lung, 1.0 - medi, out=lung)
    ribs, thorax = _ribs(rng, y, ax, hw, lung_bot)
    vert = _vertebrae(rng, x, y)

    tissue = np.float32(0.06) + np.float32(rng.uniform(0.48, 0.58)) * body
    tissue += np.float32(rng.uniform(0.10, 0.16)) * medi
    tissue += np.float32(rng.uniform(0.03, 0.07)) * vert
    tissue += np.float32(rng.uniform(0.04, 0.08)) * ribs * thorax
    tissue -= np.float32(rng.uniform(0.26, 0.34)) * lung
    # vascular markings: faint branching lines fanning out from the hila
    vessels = ramp(1.0 - np.float32(3.0) * np.abs(lowfreq(rng, w, 16)), 1.0)
    vessels *= np.float32(rng.uniform(0.03, 0.06)) * ramp(np.float32(0.95) - ax, 0.6) * lung
    tissue += vessels
    tissue *= 1.0 + np.float32(0.05) * lowfreq(rng, w, 5)
    return {"x": x, "y": y, "tissue": tissue, "lung": lung, "lungs": lungs}
