"""Post-hoc calibration as applied: logits in, calibrated probabilities out, and its record in ``calibration.json``.

The evaluate step fits the maps on validation and chooses one (``cxr.evaluation.calibrate``); the Grad-CAM galleries,
the served model and ``cxr predict`` apply the chosen one through :class:`Calibrator`, so every door shows the same
probabilities. Nothing here fits: the served model imports this module, and no SciPy or scikit-learn.

* ``none``: the softmax of the logits;
* ``temperature``: softmax(z / T), one T for all classes;
* ``vector``: softmax(z * scale + bias), a scale and a bias per class;
* ``isotonic``: per class, a non-decreasing piecewise-linear map of the softmax probability (one-vs-rest isotonic
  regression, clipped outside the points it was fitted on), floored at :data:`ISOTONIC_FLOOR` and renormalised.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr.model.inference import softmax

METHODS: tuple[str, ...] = ("none", "temperature", "vector", "isotonic")
#: The least probability an isotonic map gives a class before the row is renormalised: a class the validation
#: images never showed at that score still gets a finite log-likelihood, and no row sums to zero.
ISOTONIC_FLOOR = 1e-3


def _finite_list(value: Any, name: str, where: str, length: int | None = None) -> tuple[float, ...]:
    ok = isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
    )
    if not ok or (length is not None and len(value) != length):
        size = f"{length} " if length is not None else ""
        raise ValueError(f"{where}: '{name}' must be a list of {size}finite numbers, got {value!r}")
    return tuple(float(v) for v in value)


@dataclass(frozen=True)
class Calibrator:
    """One calibration map and its parameters; :meth:`probabilities` applies it to logits (N, K)."""

    method: str = "none"
    temperature: float = 1.0
    scale: tuple[float, ...] = ()
    bias: tuple[float, ...] = ()
    #: Per class, the isotonic map's points: (x, y), x increasing.
    knots: tuple[tuple[tuple[float, ...], tuple[float, ...]], ...] = ()

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown calibration method {self.method!r}; expected one of {METHODS}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {self.temperature!r}")
        if self.method == "vector" and (not self.scale or len(self.scale) != len(self.bias)):
            raise ValueError("vector scaling needs a scale and a bias per class")
        if self.method == "isotonic" and not self.knots:
            raise ValueError("isotonic calibration needs its points per class")

    @property
    def classes(self) -> int | None:
        """How many classes the map is for (None: any)."""
        if self.method == "vector":
            return len(self.scale)
        if self.method == "isotonic":
            return len(self.knots)
        return None

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (N, K) of raw logits (N, K)."""
        z = np.asarray(logits, dtype=np.float64)
        if z.ndim != 2:
            raise ValueError(f"logits must be (N, K), got shape {z.shape}")
        if self.classes is not None and z.shape[1] != self.classes:
            raise ValueError(f"the {self.method} calibration is for {self.classes} classes, got {z.shape[1]}")
        if self.method == "temperature":
            return softmax(z, self.temperature)
        if self.method == "vector":
            return softmax(z * np.asarray(self.scale) + np.asarray(self.bias))
        p = softmax(z)
        if self.method == "isotonic":
            q = np.stack([np.interp(p[:, c], x, y) for c, (x, y) in enumerate(self.knots)], axis=1)
            q = np.maximum(q, ISOTONIC_FLOOR)
            return q / q.sum(axis=1, keepdims=True)
        return p

    def record(self) -> dict[str, Any]:
        """The map as ``calibration.json`` holds it; ``temperature`` is 1 unless the method is temperature."""
        out: dict[str, Any] = {"method": self.method, "temperature": self.temperature}
        if self.method == "vector":
            out["vector"] = {"scale": list(self.scale), "bias": list(self.bias)}
        if self.method == "isotonic":
            out["isotonic"] = [{"x": list(x), "y": list(y)} for x, y in self.knots]
        return out

    @classmethod
    def from_record(cls, data: Any, where: str = "calibration") -> Calibrator:
        """The map a record describes; a record with only ``temperature`` (written before the other methods) is
        temperature scaling. ValueError naming ``where`` and the key for anything else."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
        t = data.get("temperature", 1.0)
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"{where}: 'temperature' must be a positive number, got {t!r}")
        if "method" not in data and "temperature" not in data:
            raise ValueError(f"{where}: 'method' (or, as written before the other methods, 'temperature') is missing")
        method = data.get("method", "temperature")
        if method not in METHODS:
            raise ValueError(f"{where}: 'method' must be one of {METHODS}, got {method!r}")
        if method == "vector":
            block = data.get("vector") if isinstance(data.get("vector"), dict) else {}
            scale = _finite_list(block.get("scale"), "vector.scale", where)
            bias = _finite_list(block.get("bias"), "vector.bias", where, len(scale))
            return cls("vector", scale=scale, bias=bias)
        if method == "isotonic":
            return cls("isotonic", knots=_isotonic_knots(data.get("isotonic"), where))
        return cls(method, temperature=float(t) if method == "temperature" else 1.0)


def _isotonic_knots(blocks: Any, where: str) -> tuple[tuple[tuple[float, ...], tuple[float, ...]], ...]:
    if not isinstance(blocks, list) or not blocks:
        raise ValueError(f"{where}: 'isotonic' must be a list of {{x, y}} per class, got {blocks!r}")
    knots = []
    for c, block in enumerate(blocks):
        block = block if isinstance(block, dict) else {}
        x = _finite_list(block.get("x"), f"isotonic[{c}].x", where)
        y = _finite_list(block.get("y"), f"isotonic[{c}].y", where, len(x))
        if not x or any(b < a for a, b in zip(x[:-1], x[1:], strict=True)):
            raise ValueError(f"{where}: 'isotonic[{c}].x' must be a non-empty increasing list")
        knots.append((x, y))
    return tuple(knots)


def read_calibration(path: Path) -> Calibrator:
    """The map of a ``calibration.json`` written by the evaluate step."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: calibration file not found; run the evaluate step first") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    return Calibrator.from_record(data, str(path))
