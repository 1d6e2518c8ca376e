"""Every file and folder the pipeline reads or writes: named once, resolved under the project root."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

#: Environment variable that moves the decoded image cache (``base.paths.cache``) out of the project.
CACHE_DIR_ENV = "CXR_CACHE_DIR"


class Paths(BaseModel):
    """Every file and folder the pipeline reads or writes, relative to the project root."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    raw: str = "data/raw"
    cache: str = "data/cache"
    manifest: str = "data/split/manifest.csv"
    data_report: str = "data/split/report.json"
    model_dir: str = "models"
    train_reports: str = "reports/train"
    eval_reports: str = "reports/eval"
    gradcam_reports: str = "reports/gradcam"
    #: The headline test figures (``dvc metrics show``): a folder, one small file per row of the table (the test
    #: split, each class, the positive class against the rest); everything, with intervals, is in ``metrics_full``.
    metrics: str = "reports/metrics"
    metrics_full: str = "reports/metrics_full.json"
    #: The headline Grad-CAM figures (``dvc metrics show``); the full set is in the Grad-CAM folder.
    cam_metrics: str = "reports/cam_metrics.json"
    report: str = "reports/report.html"
    drift: str = "reports/drift.json"
    tune: str = "reports/tune"

    def resolve(self, root: Path) -> ResolvedPaths:
        """Absolute paths under ``root``; ``CXR_CACHE_DIR``, when set, places the decoded cache elsewhere."""
        resolved = {k: root / v for k, v in self.model_dump().items()}
        # Queued DVC experiments run in temporary copies of the project: pointing them all at one decoded
        # cache saves each from decoding the whole dataset again (the cache is keyed by content and size).
        if os.environ.get(CACHE_DIR_ENV):
            resolved["cache"] = Path(os.environ[CACHE_DIR_ENV]).expanduser().resolve()
        return ResolvedPaths(root=root, **resolved)


def _inside(folder: str, name: str, doc: str) -> property:
    """A path property: the file ``name`` inside the output folder ``folder``."""
    return property(lambda self: getattr(self, folder) / name, doc=doc)


class ResolvedPaths(BaseModel):
    """``Paths`` made absolute; steps receive this."""

    model_config = ConfigDict(frozen=True)
    root: Path
    raw: Path
    cache: Path
    manifest: Path
    data_report: Path
    model_dir: Path
    train_reports: Path
    eval_reports: Path
    gradcam_reports: Path
    metrics: Path
    metrics_full: Path
    cam_metrics: Path
    report: Path
    drift: Path
    tune: Path

    # The files inside the output folders: named here only (dvc.yaml spells them as ${folder}/name, and
    # tests/unit/test_dvc_graph.py checks that every path dvc.yaml names is one of these).
    best_checkpoint = _inside(
        "model_dir", "best.pt", "The checkpoint chosen on validation (what is evaluated and served)."
    )
    last_checkpoint = _inside("model_dir", "last.pt", "The resume point: the last epoch's full training state.")
    history = _inside("train_reports", "history.csv", "Per-epoch training history (a DVC plot).")
    train_metrics = _inside("train_reports", "metrics.json", "The training summary (a DVC metric).")
    augmentation_preview = _inside(
        "train_reports", "augmentations.png", "The train augmentations drawn on one training image, by both paths."
    )
    calibration = _inside(
        "eval_reports",
        "calibration.json",
        "Temperature and threshold chosen on validation; the served model applies them.",
    )
    predictions = _inside(
        "eval_reports", "predictions.csv", "Per-image test predictions (a DVC plot; the gate pairs models by these)."
    )
    roc_points = _inside("eval_reports", "roc.csv", "ROC curve points per class (a DVC plot).")
    pr_points = _inside("eval_reports", "pr.csv", "Precision-recall curve points per class (a DVC plot).")
    confusion = _inside("eval_reports", "confusion_matrix.json", "Confusion counts with the class order.")
    cam_metrics_full = _inside("gradcam_reports", "metrics.json", "Every Grad-CAM measure, per class included.")
