"""Data drift: the images new since the champion's data against the data it was made from.

Checks, each a two-sample permutation test with a p-value (drift is flagged when one falls below
``drift.alpha`` over the number of tests, Bonferroni):

- embedding: kernel MMD (RBF, median-heuristic bandwidth) on the champion's penultimate features; this is the
  check that sees shifts a model cares about;
- class mix: chi-square statistic of the per-class counts;
- intensity: kernel MMD on per-image mean, spread and 5th/95th percentiles, standardised;
- image sizes and modes: chi-square statistics of the stored files' sizes and PIL modes.

The reference is the champion's own data version: the held-out images (validation and test splits) of the
manifest it was registered with, read from the current raw data by content hash. Held-out, not training
images: the champion's weights were fitted to its training images, so their features are tighter than those
of any unseen image and the test would flag "drift" between two samples of one distribution. Both held-out
splits, not validation alone: the reference is fixed for the champion's life, and a small one that happens
to sit at the edge of its distribution makes every later check likelier to flag (400 validation images gave
5% false alarms on new data from an unchanged source, at alpha 0.01). The current side is every image whose
content the champion's manifest does not hold (data that arrived since); with none, nothing is tested.
No scipy/numpy-free library fits here without heavy dependencies (alibi-detect pulls in transformers and
numba), so the MMD test is the short, tested implementation in :mod:`cxr.stats.twosample`.
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr.core.config import Settings
from cxr.core.io import read_csv
from cxr.core.paths import ResolvedPaths
from cxr.data.manifest import manifest_hash, read_manifest
from cxr.monitoring.report import DriftReport, Sample, compare_samples, write_report
from cxr.ops.lineage import data_version
from cxr.ops.notify import notify_drift
from cxr.ops.tracking import CHAMPION, MANIFEST_ARTIFACT

log = logging.getLogger(__name__)


def penultimate_features(model: Any, images: np.ndarray, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """The input of the model's classification head (its last ``nn.Linear``) for each image: (N, D) float32."""
    import torch
    from torch import nn

    from cxr.model.preprocess import to_input

    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    captured: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach().float().cpu()))
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).unsqueeze(1)
                model(to_input(batch, device))
    finally:
        handle.remove()
    return torch.cat(captured).numpy() if captured else np.zeros((0, head.in_features), np.float32)


def load_sample(rows: Sequence[dict[str, str]], raw: Path, size: int, max_images: int, seed: int) -> Sample:
    """A seeded sample of at most ``max_images`` manifest rows, decoded at ``size``, with the files' sizes and modes."""
    from PIL import Image

    from cxr.data.rawstore import RawStore
    from cxr.model.preprocess import decode

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


#: The champion's splits whose images its weights never fitted: the reference side.
HELD_OUT: tuple[str, ...] = ("valid", "test")


def choose_sides(
    champion_rows: Sequence[dict[str, str]], current_rows: Sequence[dict[str, str]]
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(reference rows, current rows) as rows of the current manifest.

    Reference: the champion's held-out images (validation and test) still present (by content hash). Current:
    the images the champion's manifest does not hold: data that arrived since. None arrived, none to compare:
    the current split's valid and test halves are one stratified draw from the champion's own data, so no test
    between them can find drift; comparing them only reports how often the tests err.
    """
    by_hash = {r["sha256"]: r for r in current_rows}
    champion_hashes = {r["sha256"] for r in champion_rows}
    reference = [by_hash[r["sha256"]] for r in champion_rows if r["split"] in HELD_OUT and r["sha256"] in by_hash]
    return reference, [r for r in current_rows if r["sha256"] not in champion_hashes]


class NoReference(LookupError):
    """There is nothing to compare with (no champion, or one without its manifest or checkpoint); says why."""


def _champion(settings: Settings, uri: str, dst: Path) -> tuple[str, Path, Path]:
    """(version, checkpoint, manifest) of the champion, downloaded into ``dst``; NoReference when unusable."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(uri)
    name = settings.base.model_name
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        raise NoReference(f"no champion of {name} yet: nothing to compare with") from None
    try:
        manifest = Path(
            mlflow.artifacts.download_artifacts(
                run_id=mv.run_id, artifact_path=MANIFEST_ARTIFACT, dst_path=str(dst / "run"), tracking_uri=uri
            )
        )
    except (MlflowException, OSError):
        raise NoReference(f"champion {name} version {mv.version} has no {MANIFEST_ARTIFACT} in its run") from None
    # The version's concrete location: a models:/ URI would be resolved against the process-wide registry.
    location = client.get_model_version_download_uri(name, mv.version)
    model_dir = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(dst / "model"), tracking_uri=uri)
    )
    checkpoints = sorted(model_dir.rglob("*.pt"))
    if not checkpoints:
        raise NoReference(f"champion {name} version {mv.version} has no checkpoint among its model's artifacts")
    return str(mv.version), checkpoints[0], manifest


def check(settings: Settings, paths: ResolvedPaths, uri: str) -> DriftReport:
    """Compare the current data (the manifest at ``paths``) with the champion's; skipped, with why, when it cannot."""
    from cxr.model.inference import load_trained

    cfg = settings.drift
    # What is checked, recorded in the report (the gate reuses a report only for the same data).
    data = manifest_hash(read_manifest(paths.manifest)) if paths.manifest.is_file() else None
    with tempfile.TemporaryDirectory(prefix="cxr-drift-") as tmp:
        try:
            version, checkpoint, manifest = _champion(settings, uri, Path(tmp))
        except NoReference as why:
            return DriftReport(status="skipped", alpha=cfg.alpha, reasons=[str(why)], data=data)
        ref_rows, cur_rows = choose_sides(read_csv(manifest), list(read_manifest(paths.manifest).rows))
        if not cur_rows:
            return DriftReport(
                status="no new data",
                alpha=cfg.alpha,
                champion_version=version,
                data=data,
                reasons=[f"every image is one champion version {version} was made from; the check runs on new images"],
            )
        if len(ref_rows) < 2 or len(cur_rows) < 2:
            return DriftReport(
                status="skipped",
                alpha=cfg.alpha,
                champion_version=version,
                data=data,
                reasons=[
                    f"too few images to compare: {len(ref_rows)} of the champion's held-out images are in the "
                    f"current raw data, {len(cur_rows)} current"
                ],
            )
        model, meta = load_trained(checkpoint)
    size, seed = int(meta["image_size"]), settings.base.seed
    ref = load_sample(ref_rows, paths.raw, size, cfg.reference_images, seed)
    cur = load_sample(cur_rows, paths.raw, size, cfg.max_images, seed + 1)
    report = compare_samples(ref, cur, lambda x: penultimate_features(model, x), cfg, seed)
    report.reference = f"champion version {version}'s held-out images (validation and test)"
    report.current = "the images new since its data version"
    report.champion_version, report.data = version, data
    return report


def drift(settings: Settings, paths: ResolvedPaths, uri: str) -> DriftReport:
    """The drift step: check, record it (``base.paths.drift``, an MLflow run), and post a notice when flagged."""
    report = check(settings, paths, uri)
    version = data_version(paths.root)
    if report.status == "checked":
        report.mlflow_run_id = log_to_mlflow(report, settings, uri, paths.root, version)
    write_report(report, paths.drift)
    if report.flagged and settings.drift.notify:
        notify_drift(
            "; ".join(report.reasons),
            {
                "data_version": version,
                "mlflow_run_id": report.mlflow_run_id,
                "champion_version": report.champion_version,
                "tests": report.tests,
            },
        )
    log.info("%s", report.summary())
    return report


def log_to_mlflow(report: DriftReport, settings: Settings, uri: str, root: Path, data_version: str | None) -> str:
    """Log the report as its own MLflow run (tag ``cxr.kind=drift``) in the project's experiment; returns the run id."""
    import mlflow

    from cxr.ops.tracking import ensure_experiment

    mlflow.set_tracking_uri(uri)
    exp_id = ensure_experiment(mlflow, settings.base.experiment, root, uri)
    with mlflow.start_run(experiment_id=exp_id, run_name=f"drift-{(data_version or 'unknown')[:8]}") as run:
        mlflow.set_tags(
            {
                "cxr.kind": "drift",
                "drift.status": report.status,
                "drift.flagged": str(report.flagged).lower(),
                "champion_version": report.champion_version or "none",
                "data_version": data_version or "unknown",
            }
        )
        mlflow.log_metrics(report.metrics())
        mlflow.log_dict(report.to_dict(), "drift.json")
        mlflow.log_text(report.markdown(), "drift.md")
        return run.info.run_id
