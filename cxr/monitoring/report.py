"""The drift report: what was compared, every test's statistic and p-value, the verdict; and the comparison."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from cxr.core.io import read_json, write_json
from cxr.core.sections import Drift
from cxr.ops.markdown import bullets, table
from cxr.stats.twosample import (
    INTENSITY_FEATURES,
    categorical_test,
    intensity_features,
    intensity_test,
    mmd_permutation_test,
)


@dataclass(frozen=True)
class Sample:
    """Images of one side of the comparison, decoded at the model's size, with their labels and file facts."""

    images: np.ndarray  # (N, S, S) uint8
    labels: tuple[str, ...]
    sizes: tuple[str, ...] = ()
    modes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class DriftReport:
    """The outcome of a drift check: what was compared, every test's statistic and p-value, and the verdict."""

    #: "checked"; "no new data" (nothing arrived since the champion's data: no comparison to make); "skipped"
    #: (nothing to compare with: no champion, or one without its manifest), with the reason.
    status: str
    flagged: bool = False
    reasons: list[str] = field(default_factory=list)
    #: The false-alarm rate of the whole check: each of its tests is held to ``alpha / tests`` (Bonferroni).
    alpha: float = 0.01
    alpha_per_test: float | None = None
    reference: str = ""
    current: str = ""
    n_reference: int = 0
    n_current: int = 0
    champion_version: str | None = None
    tests: dict[str, dict[str, Any]] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    intensity: dict[str, dict[str, float]] = field(default_factory=dict)
    #: What was checked: the current manifest's hash (``cxr.data.manifest.manifest_hash``).
    data: str | None = None
    #: The MLflow run that records this check (none when it was skipped).
    mlflow_run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able mapping."""
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """Flat numeric metrics for MLflow (``drift/<test>_p``, ``drift/<test>_stat``, ``drift/flagged``)."""
        out: dict[str, float] = {
            "drift/flagged": float(self.flagged),
            "drift/n_reference": float(self.n_reference),
            "drift/n_current": float(self.n_current),
        }
        for name, t in self.tests.items():
            if t.get("p") is not None:
                out[f"drift/{name}_p"] = float(t["p"])
            if t.get("stat") is not None:
                out[f"drift/{name}_stat"] = float(t["stat"])
        return out

    def describes(self, data: str, champion_version: str | None) -> bool:
        """Whether this report is the check of these data (manifest hash) against this champion."""
        return self.data == data and self.champion_version == champion_version

    def summary(self) -> str:
        """One line: the verdict and its reasons."""
        if self.status == "no new data":
            return f"no new data to check for drift: {'; '.join(self.reasons)}"
        if self.status != "checked":
            return f"drift check skipped: {'; '.join(self.reasons) or 'no reason given'}"
        return f"drift: {'; '.join(self.reasons)}" if self.flagged else "no drift"

    def markdown(self) -> str:
        """The report as Markdown (the Prefect artifact, the MLflow run's drift.md, the notice)."""
        if self.status == "no new data":
            return f"**No new data to check for drift**: {'; '.join(self.reasons)}"
        if self.status != "checked":
            return f"**Drift check skipped**: {'; '.join(self.reasons) or 'no reason given'}"
        level = self.alpha_per_test if self.alpha_per_test is not None else self.alpha
        lines = [
            f"**Data drift: {'DRIFT' if self.flagged else 'no drift'}** (alpha {self.alpha} over "
            f"{len(self.tests)} tests, {level:.3g} each; champion version {self.champion_version})",
            "",
            f"Reference: {self.reference} ({self.n_reference} images). "
            f"Current: {self.current} ({self.n_current} images).",
            "",
            *table(
                ["test", "statistic", "p-value", "drift"],
                (
                    (
                        name,
                        fmt_number(t.get("stat")),
                        fmt_number(t.get("p")),
                        "yes" if t.get("p") is not None and t["p"] < self.alpha else "no",
                    )
                    for name, t in self.tests.items()
                ),
                right=(1, 2),
            ),
        ]
        if self.counts:
            ref, cur = self.counts.get("reference", {}), self.counts.get("current", {})
            lines += [
                "",
                *table(
                    ["class", "reference", "current"],
                    ((c, ref.get(c, 0), cur.get(c, 0)) for c in sorted(set(ref) | set(cur))),
                    right=(1, 2),
                ),
            ]
        if self.intensity:
            lines += [
                "",
                *table(
                    ["intensity (0-255)", "reference", "current"],
                    (
                        (
                            f,
                            fmt_number(self.intensity["reference"].get(f)),
                            fmt_number(self.intensity["current"].get(f)),
                        )
                        for f in INTENSITY_FEATURES
                    ),
                    right=(1, 2),
                ),
            ]
        if self.reasons:
            lines += ["", *bullets(self.reasons)]
        return "\n".join(lines)


def fmt_number(value: Any) -> str:
    """A statistic as text: four significant digits, ``n/a`` when absent."""
    if value is None:
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def compare_samples(
    reference: Sample,
    current: Sample,
    embed: Callable[[np.ndarray], np.ndarray] | None,
    cfg: Drift,
    seed: int = 0,
) -> DriftReport:
    """Run every test between two samples; ``embed`` maps images (N, S, S) to features (N, D)."""
    report = DriftReport(status="checked", alpha=cfg.alpha, n_reference=len(reference), n_current=len(current))
    perms = cfg.permutations
    if embed is not None:
        fx, fy = embed(reference.images), embed(current.images)
        mmd2, p, bw = mmd_permutation_test(fx, fy, perms, seed)
        report.tests["embedding_mmd"] = {"stat": mmd2, "p": p, "bandwidth": bw, "dims": int(fx.shape[1])}
    stat, p = categorical_test(reference.labels, current.labels, perms, seed + 1)
    report.tests["class_mix"] = {"stat": stat, "p": p}
    stat, p = intensity_test(reference.images, current.images, perms, seed + 2)
    report.tests["intensity"] = {"stat": stat, "p": p}
    for i, (name, ref_vals, cur_vals) in enumerate(
        (("image_size", reference.sizes, current.sizes), ("image_mode", reference.modes, current.modes))
    ):
        if ref_vals and cur_vals:
            stat, p = categorical_test(ref_vals, cur_vals, perms, seed + 3 + i)
            report.tests[name] = {"stat": stat, "p": p}
    report.counts = {
        "reference": dict(sorted(Counter(reference.labels).items())),
        "current": dict(sorted(Counter(current.labels).items())),
    }
    fr, fc = intensity_features(reference.images), intensity_features(current.images)
    report.intensity = {
        "reference": dict(zip(INTENSITY_FEATURES, map(float, fr.mean(0)), strict=True)),
        "current": dict(zip(INTENSITY_FEATURES, map(float, fc.mean(0)), strict=True)),
    }
    # Each test at alpha / m, so that the whole check's false-alarm rate is at most alpha (Bonferroni).
    level = report.alpha_per_test = cfg.alpha / len(report.tests)
    for name, t in report.tests.items():
        if t["p"] < level:
            report.reasons.append(
                f"{name}: p = {t['p']:.3g} < {level:.3g} (alpha {cfg.alpha} over {len(report.tests)} tests)"
            )
    report.flagged = bool(report.reasons)
    return report


def write_report(report: DriftReport, path: Path) -> None:
    """Write the report as JSON, atomically."""
    write_json(path, report.to_dict())


def read_report(path: Path) -> DriftReport | None:
    """A report written by :func:`write_report`, or None when there is none (or one this version cannot read)."""
    data = read_json(path)
    if not isinstance(data, dict):
        return None
    known = {f.name for f in fields(DriftReport)}
    return DriftReport(**{k: v for k, v in data.items() if k in known})
