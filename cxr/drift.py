"""Data drift: new (or test) images against the data the champion was trained on.

Checks, each a two-sample test with a p-value (drift is flagged below ``drift.alpha``):

- embedding: kernel MMD (RBF, median-heuristic bandwidth) on the champion's penultimate features, with a
  permutation p-value; this is the check that sees shifts a model cares about;
- class mix: chi-square test of the per-class counts;
- intensity: Kolmogorov-Smirnov tests of per-image mean, spread and 5th/95th percentiles (Bonferroni);
- image sizes and modes: chi-square tests of the stored files' sizes and PIL modes.

The reference is the champion's own data version: the validation split of the manifest it was registered
with, read from the current raw data by content hash. Validation, not training images: the champion's
weights were fitted to its training images, so their features are tighter than those of any unseen image
and the test would flag "drift" between two samples of one distribution. The current side is every image
whose content the champion's manifest does not hold (data that arrived since), or the current test split
when nothing new arrived. No scipy/numpy-free library fits here without heavy dependencies (alibi-detect
pulls in transformers and numba), so the MMD test is the short, tested implementation below.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr.config import Drift, ResolvedPaths, Settings

log = logging.getLogger(__name__)

#: The Prefect artifact key of the drift report (fixed, so the UI keeps its history).
DRIFT_ARTIFACT = "cxr-drift"
INTENSITY_FEATURES: tuple[str, ...] = ("mean", "std", "p05", "p95")


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

    status: str  # "checked" | "skipped"
    flagged: bool = False
    reasons: list[str] = field(default_factory=list)
    alpha: float = 0.01
    reference: str = ""
    current: str = ""
    n_reference: int = 0
    n_current: int = 0
    champion_version: str | None = None
    tests: dict[str, dict[str, Any]] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    intensity: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able mapping."""
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """Flat numeric metrics for MLflow (``drift/<test>_p``, ``drift/<test>_stat``, ``drift/flagged``)."""
        out: dict[str, float] = {"drift/flagged": float(self.flagged), "drift/n_reference": float(self.n_reference),
                                 "drift/n_current": float(self.n_current)}
        for name, t in self.tests.items():
            if t.get("p") is not None:
                out[f"drift/{name}_p"] = float(t["p"])
            if t.get("stat") is not None:
                out[f"drift/{name}_stat"] = float(t["stat"])
        return out

    def markdown(self) -> str:
        """The report as Markdown (the Prefect artifact and the notice)."""
        if self.status != "checked":
            return f"**Drift check skipped**: {'; '.join(self.reasons) or 'no reason given'}"
        verdict = "DRIFT" if self.flagged else "no drift"
        lines = [
            f"**Data drift: {verdict}** (alpha {self.alpha}; champion version {self.champion_version})",
            "",
            f"Reference: {self.reference} ({self.n_reference} images). Current: {self.current} ({self.n_current} images).",
            "",
            "| test | statistic | p-value | drift |",
            "| --- | ---: | ---: | --- |",
        ]
        for name, t in self.tests.items():
            p = t.get("p")
            lines.append(f"| {name} | {_num(t.get('stat'))} | {_num(p)} | {'yes' if p is not None and p < self.alpha else 'no'} |")
        if self.counts:
            classes = sorted(set(self.counts.get("reference", {})) | set(self.counts.get("current", {})))
            lines += ["", "| class | reference | current |", "| --- | ---: | ---: |"]
            lines += [f"| {c} | {self.counts.get('reference', {}).get(c, 0)} | {self.counts.get('current', {}).get(c, 0)} |"
                      for c in classes]
        if self.intensity:
            lines += ["", "| intensity (0-255) | reference | current |", "| --- | ---: | ---: |"]
            for feat in INTENSITY_FEATURES:
                lines.append(f"| {feat} | {_num(self.intensity['reference'].get(feat))} | "
                             f"{_num(self.intensity['current'].get(feat))} |")
        if self.reasons:
            lines += ["", *[f"- {r}" for r in self.reasons]]
        return "\n".join(lines)


def _num(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------------------------- the tests


def mmd_permutation_test(
    x: np.ndarray, y: np.ndarray, permutations: int = 500, seed: int = 0
) -> tuple[float, float, float]:
    """Unbiased RBF-kernel MMD^2 between samples ``x`` (m, d) and ``y`` (n, d) and its permutation p-value.

    The bandwidth is the median pairwise distance of the pooled sample. Returns (mmd2, p, bandwidth); the
    smallest reachable p is 1 / (permutations + 1).
    """
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"MMD needs at least two points per sample, got {m} and {n}")
    z = np.concatenate([x, y])
    sq = np.einsum("ij,ij->i", z, z)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
    off = d2[np.triu_indices(len(z), 1)]
    bandwidth = float(np.sqrt(np.median(off[off > 0]))) if np.any(off > 0) else 1.0
    k = np.exp(-d2 / (2.0 * bandwidth**2))

    rng = np.random.default_rng(seed)
    # Row 0 is the observed split; each further row a random relabelling of the pooled sample.
    masks = np.zeros((permutations + 1, m + n), dtype=bool)
    masks[0, :m] = True
    for i in range(1, permutations + 1):
        masks[i, rng.permutation(m + n)[:m]] = True
    a = masks.astype(np.float64)
    b = 1.0 - a
    ka, kb = k @ a.T, k @ b.T  # (N, P+1)
    # The kernel's diagonal is 1: subtracting m (and n) drops the i == j terms of the unbiased estimate.
    xx = (np.einsum("ip,ip->p", a.T, ka) - m) / (m * (m - 1))
    yy = (np.einsum("ip,ip->p", b.T, kb) - n) / (n * (n - 1))
    xy = np.einsum("ip,ip->p", a.T, kb) / (m * n)
    stats = xx + yy - 2.0 * xy
    observed = float(stats[0])
    p = float((1 + np.sum(stats[1:] >= observed)) / (permutations + 1))
    return observed, p, bandwidth


def categorical_test(reference: Sequence[str], current: Sequence[str]) -> tuple[float | None, float]:
    """Chi-square test that two samples of categories (classes, sizes, modes) share one distribution."""
    from scipy.stats import chi2_contingency

    cats = sorted(set(reference) | set(current))
    if len(cats) < 2 or not reference or not current:
        return None, 1.0
    ra, ca = Counter(reference), Counter(current)
    table = np.array([[ra[c] for c in cats], [ca[c] for c in cats]], dtype=np.float64)
    res = chi2_contingency(table)
    return float(res.statistic), float(res.pvalue)


def intensity_features(images: np.ndarray) -> np.ndarray:
    """Per-image mean, standard deviation, 5th and 95th percentile of the gray levels (N, 4)."""
    flat = np.asarray(images, np.float32).reshape(len(images), -1)
    p05, p95 = np.percentile(flat, [5, 95], axis=1)
    return np.stack([flat.mean(1), flat.std(1), p05, p95], axis=1)


def intensity_test(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Kolmogorov-Smirnov tests of each intensity feature; (largest KS statistic, Bonferroni-adjusted min p)."""
    from scipy.stats import ks_2samp

    fr, fc = intensity_features(reference), intensity_features(current)
    results = [ks_2samp(fr[:, j], fc[:, j]) for j in range(fr.shape[1])]
    stat = max(float(r.statistic) for r in results)
    p = min(1.0, min(float(r.pvalue) for r in results) * len(results))
    return stat, p


def check_drift(
    reference: Sample,
    current: Sample,
    embed: Callable[[np.ndarray], np.ndarray] | None,
    cfg: Drift,
    seed: int = 0,
) -> DriftReport:
    """Run every test between two samples; ``embed`` maps images (N, S, S) to features (N, D)."""
    report = DriftReport(status="checked", alpha=cfg.alpha, n_reference=len(reference), n_current=len(current))
    if embed is not None:
        fx, fy = embed(reference.images), embed(current.images)
        mmd2, p, bw = mmd_permutation_test(fx, fy, cfg.permutations, seed)
        report.tests["embedding_mmd"] = {"stat": mmd2, "p": p, "bandwidth": bw, "dims": int(fx.shape[1])}
    stat, p = categorical_test(reference.labels, current.labels)
    report.tests["class_mix"] = {"stat": stat, "p": p}
    stat, p = intensity_test(reference.images, current.images)
    report.tests["intensity"] = {"stat": stat, "p": p}
    for name, ref_vals, cur_vals in (("image_size", reference.sizes, current.sizes),
                                     ("image_mode", reference.modes, current.modes)):
        if ref_vals and cur_vals:
            stat, p = categorical_test(ref_vals, cur_vals)
            report.tests[name] = {"stat": stat, "p": p}
    report.counts = {"reference": dict(sorted(Counter(reference.labels).items())),
                     "current": dict(sorted(Counter(current.labels).items()))}
    fr, fc = intensity_features(reference.images), intensity_features(current.images)
    report.intensity = {"reference": dict(zip(INTENSITY_FEATURES, map(float, fr.mean(0)))),
                        "current": dict(zip(INTENSITY_FEATURES, map(float, fc.mean(0))))}
    for name, t in report.tests.items():
        if t["p"] < cfg.alpha:
            report.reasons.append(f"{name}: p = {t['p']:.3g} < alpha {cfg.alpha}")
    report.flagged = bool(report.reasons)
    return report


# ------------------------------------------------------------------------------ features and samples


def penultimate_features(model: Any, images: np.ndarray, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """The input of the model's classification head (its last ``nn.Linear``) for each image: (N, D) float32."""
    import torch
    from torch import nn

    from cxr.data import to_input

    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    captured: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach().float().cpu()))
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).unsqueeze(1)
                model(to_input(batch, device))
    finally:
        handle.remove()
    return torch.cat(captured).numpy() if captured else np.zeros((0, head.in_features), np.float32)


def load_sample(rows: Sequence[dict[str, str]], raw: Path, size: int, max_images: int, seed: int) -> Sample:
    """A seeded sample of at most ``max_images`` manifest rows, decoded at ``size``, with their files' sizes and modes."""
    from PIL import Image

    from cxr.data import decode
    from cxr.rawstore import RawStore

    rows = list(rows)
    if len(rows) > max_images:
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), max_images, replace=False))
        rows = [rows[i] for i in keep]
    images, sizes, modes = [], [], []
    with RawStore(raw) as store:
        for r in rows:
            data = store.read(r["path"])
            with Image.open(io.BytesIO(data)) as im:
                sizes.append(f"{im.size[0]}x{im.size[1]}")
                modes.append(im.mode)
            images.append(decode(data, size, store.describe(r["path"])))
    stack = np.stack(images) if images else np.zeros((0, size, size), np.uint8)
    return Sample(stack, tuple(r["label"] for r in rows), tuple(sizes), tuple(modes))


def _read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def choose_sides(
    champion_rows: Sequence[dict[str, str]], current_rows: Sequence[dict[str, str]]
) -> tuple[list[dict[str, str]], str, list[dict[str, str]], str]:
    """(reference rows, description, current rows, description) as paths of the current raw data.

    Reference: the champion's validation images still present (by content hash). Current: images the
    champion's manifest does not hold, or the current test split when there are none.
    """
    by_hash = {r["sha256"]: r for r in current_rows}
    champion_hashes = {r["sha256"] for r in champion_rows}
    reference = [by_hash[r["sha256"]] for r in champion_rows if r["split"] == "valid" and r["sha256"] in by_hash]
    new = [r for r in current_rows if r["sha256"] not in champion_hashes]
    if new:
        return reference, "the champion's validation split", new, "images new since the champion's data version"
    test = [r for r in current_rows if r["split"] == "test"]
    return reference, "the champion's validation split", test, "the current test split (no new images)"


class NoReference(LookupError):
    """There is nothing to compare with (no champion, or one without its manifest or checkpoint); says why."""


def _champion(settings: Settings, uri: str, dst: Path) -> tuple[str, Path, Path]:
    """(version, checkpoint, manifest) of the champion, downloaded into ``dst``; NoReference when unusable."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(uri)
    name = settings.base.model_name
    try:
        mv = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        raise NoReference(f"no champion of {name} yet: nothing to compare with") from None
    try:
        manifest = Path(mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="pipeline/manifest.csv",
                                                            dst_path=str(dst / "run"), tracking_uri=uri))
    except (MlflowException, OSError):
        raise NoReference(f"champion {name} version {mv.version} has no pipeline/manifest.csv in its run") from None
    # The version's concrete location: a models:/ URI would be resolved against the process-wide registry.
    location = client.get_model_version_download_uri(name, mv.version)
    model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(dst / "model"),
                                                         tracking_uri=uri))
    checkpoints = sorted(model_dir.rglob("*.pt"))
    if not checkpoints:
        raise NoReference(f"champion {name} version {mv.version} has no checkpoint among its model's artifacts")
    return str(mv.version), checkpoints[0], manifest


def run_drift_check(settings: Settings, paths: ResolvedPaths, uri: str) -> DriftReport:
    """Compare the current data with the champion's and write the report to ``base.paths.drift``."""
    from cxr.inference import load_trained

    cfg = settings.drift
    with tempfile.TemporaryDirectory(prefix="cxr-drift-") as tmp:
        try:
            champion = _champion(settings, uri, Path(tmp))
        except NoReference as why:
            champion = None
            report = DriftReport(status="skipped", alpha=cfg.alpha, reasons=[str(why)])
        if champion is not None:
            version, checkpoint, manifest = champion
            ref_rows, ref_desc, cur_rows, cur_desc = choose_sides(_read_rows(manifest), _read_rows(paths.manifest))
            if len(ref_rows) < 2 or len(cur_rows) < 2:
                report = DriftReport(status="skipped", alpha=cfg.alpha, champion_version=version, reasons=[
                    f"too few images to compare: {len(ref_rows)} of the champion's validation split are in the "
                    f"current raw data, {len(cur_rows)} current"])
            else:
                model, meta = load_trained(checkpoint)
                size = int(meta["image_size"])
                seed = settings.base.seed
                ref = load_sample(ref_rows, paths.raw, size, cfg.max_images, seed)
                cur = load_sample(cur_rows, paths.raw, size, cfg.max_images, seed + 1)
                report = check_drift(ref, cur, lambda x: penultimate_features(model, x), cfg, seed)
                report.reference, report.current, report.champion_version = ref_desc, cur_desc, version
    write_report(report, paths.drift)
    log.info("drift check: %s", "; ".join(report.reasons) or ("no drift" if report.status == "checked" else "skipped"))
    return report


def write_report(report: DriftReport, path: Path) -> None:
    """Write the report as JSON, atomically."""
    from cxr.data import write_json

    write_json(path, report.to_dict())


def read_report(path: Path) -> DriftReport | None:
    """A report written by :func:`write_report`, or None when there is none."""
    if not path.is_file():
        return None
    return DriftReport(**json.loads(path.read_text()))


def log_to_mlflow(report: DriftReport, settings: Settings, uri: str, root: Path, data_version: str | None) -> str:
    """Log the report as its own MLflow run (tag ``cxr.kind=drift``) in the project's experiment; returns the run id."""
    import mlflow

    from cxr.tracking import ensure_experiment

    mlflow.set_tracking_uri(uri)
    exp_id = ensure_experiment(mlflow, settings.base.experiment, root, uri)
    with mlflow.start_run(experiment_id=exp_id, run_name=f"drift-{(data_version or 'unknown')[:8]}") as run:
        mlflow.set_tags({"cxr.kind": "drift", "drift.status": report.status, "drift.flagged": str(report.flagged).lower(),
                         "champion_version": report.champion_version or "none", "data_version": data_version or "unknown"})
        mlflow.log_metrics(report.metrics())
        mlflow.log_dict(report.to_dict(), "drift.json")
        mlflow.log_text(report.markdown(), "drift.md")
        return run.info.run_id


def report_sections(path: Path) -> list[tuple[str, str, str]]:
    """The drift check's section of the HTML report (id, title, HTML) when the flow wrote a drift report, else none."""
    from cxr.templating import render_html

    report = read_report(path)
    if report is None:
        return []
    title = "Data drift against the champion" if report.status == "checked" else "Data drift"
    counts = sorted(set(report.counts.get("reference", {})) | set(report.counts.get("current", {})))
    html = render_html("report_drift.html.j2", drift=report, count_classes=counts,
                       intensity_features=list(INTENSITY_FEATURES))
    return [("drift", title, html)]
