"""The evaluation step: the only reader of the test split; metrics with intervals, calibration and figures."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from cxr.core.io import StagedOutputs, ensure_writable, staged_outputs, write_json
from cxr.core.paths import ResolvedPaths
from cxr.core.sections import Base, Evaluate
from cxr.data.manifest import Manifest, read_manifest
from cxr.data.rawstore import replace_dir, temp_dir
from cxr.evaluation.calibrate import CalibrationChoice, choose_calibration
from cxr.evaluation.headline import headline_files
from cxr.model.cache import CachedImages, decoded_cache
from cxr.model.inference import load_trained, pick_device, predict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalResult:
    """Where the metrics went and the headline numbers."""

    metrics: Path
    accuracy: float
    macro_auc: float | None


def split_logits(
    model: torch.nn.Module, manifest: Manifest, classes, paths: ResolvedPaths, size: int, batch_size: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of one split (``name``, for the progress shown), from the decoded cache."""
    images = decoded_cache(manifest, paths.raw, paths.cache, size)
    loader = DataLoader(CachedImages(images, manifest.labels(classes)), batch_size=batch_size, shuffle=False)
    device = next(model.parameters()).device
    return predict(model, loader, device, desc=f"scoring the {name} split")


def _score_splits(
    model: torch.nn.Module, classes: Sequence[str], paths: ResolvedPaths, size: int, batch_size: int
) -> tuple[Manifest, tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The test split's manifest, and (logits, labels) of the validation and the test split."""
    manifest = read_manifest(paths.manifest)
    valid, test = manifest.select("valid"), manifest.select("test")
    if len(test) == 0:
        raise ValueError(f"{paths.manifest}: the test split is empty")
    return (
        test,
        split_logits(model, valid, classes, paths, size, batch_size, "validation"),
        split_logits(model, test, classes, paths, size, batch_size, "test"),
    )


def _positive_threshold(
    classes: Sequence[str], positive: str | None, labels: np.ndarray, probs: np.ndarray
) -> float | None:
    """The positive class's threshold chosen on validation; None (argmax) without one, or with two classes."""
    from cxr.stats.classification import choose_threshold

    if positive is None or len(classes) <= 2:
        return None
    idx = classes.index(positive)
    return float(choose_threshold((labels == idx).astype(int), probs[:, idx]))


def _calibration_summary(
    choice: CalibrationChoice, labels: np.ndarray, logits: np.ndarray, cfg: Evaluate, seed: int
) -> dict[str, Any]:
    """The calibration chosen on validation and what it gives on test: ECE with its interval, Brier, the
    reliability bins' counts; beside it every candidate's test ECE (reported, never used for the choice)."""
    from cxr.evaluation.calibrate import held_out_figures
    from cxr.stats.calibration import calibration, ece_with_ci

    def ece(probs: np.ndarray) -> dict[str, Any]:
        return ece_with_ci(labels, probs, n_boot=cfg.n_boot, seed=seed, ci=cfg.ci)

    methods = held_out_figures(choice, labels, logits, ece)
    served = calibration(labels, choice.calibrator.probabilities(logits))
    record = {k: v for k, v in choice.record().items() if k not in ("vector", "isotonic")}  # the map: calibration.json
    return {
        **record,
        **methods[choice.method],
        "brier": served["brier"],
        "ece_uncalibrated": methods["none"]["ece"],
        "methods": methods,
        "n_bins": served["n_bins"],
        "bin_count": served["bin_count"],
    }


def _write_reports(
    out: StagedOutputs,
    paths: ResolvedPaths,
    metrics: dict,
    cm: list[list[int]],
    classes: Sequence[str],
    calibration: dict[str, Any],
    test: Manifest,
    labels: np.ndarray,
    probs: np.ndarray,
) -> None:
    """The metrics files, calibration.json (what serving reads), predictions.csv and the ROC and PR points."""
    from cxr.evaluation import figures

    out.write_json(paths.metrics_full, metrics)
    out.write_json(paths.confusion, {"classes": list(classes), "counts": cm})
    out.write_json(paths.calibration, calibration)
    # The content hash lets the promotion gate pair two models' answers image by image.
    columns = ["path", "sha256", "actual", "predicted", *[f"p_{c}" for c in classes]]
    rows = (
        [r["path"], r["sha256"], classes[y], classes[int(p.argmax())], *[f"{v:.6f}" for v in p]]
        for r, y, p in zip(test.rows, labels, probs, strict=True)
    )
    out.write_csv(paths.predictions, columns, (dict(zip(columns, row, strict=True)) for row in rows))
    out.write_csv(paths.roc_points, ["class", "fpr", "tpr", "threshold"], figures.roc_points(labels, probs, classes))
    out.write_csv(
        paths.pr_points, ["class", "recall", "precision", "threshold"], figures.pr_points(labels, probs, classes)
    )


def _save_figures(
    out: StagedOutputs,
    folder: Path,
    cm: list[list[int]],
    classes: Sequence[str],
    labels: np.ndarray,
    probs: np.ndarray,
    ece_ci: tuple[float | None, float | None],
) -> None:
    """The confusion matrix, ROC, precision-recall and reliability figures as PNGs in ``out``."""
    from cxr.evaluation import figures

    figs = {
        "confusion_matrix.png": figures.plot_confusion_matrix(np.asarray(cm), classes),
        "roc.png": figures.plot_roc(labels, probs, classes),
        "precision_recall.png": figures.plot_pr(labels, probs, classes),
        "reliability.png": figures.plot_reliability(labels, probs, ece_ci=ece_ci),
    }
    for name, fig in figs.items():
        with out.path(folder / name) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def evaluate(base: Base, cfg: Evaluate, paths: ResolvedPaths, device: str = "auto") -> EvalResult:
    """Score the best checkpoint on the test split; calibrate and choose thresholds on valid only."""
    from cxr.evaluation.probes import shortcut_probes
    from cxr.stats.classification import classification_metrics, per_source_metrics

    # A folder it cannot write to stops the step before the minutes of scoring, not after.
    ensure_writable(paths.eval_reports, paths.metrics.parent, paths.metrics_full.parent)
    model, meta = load_trained(paths.best_checkpoint, pick_device(device))
    classes = tuple(meta["classes"])
    if classes != base.labels:
        raise ValueError(
            f"{paths.best_checkpoint}: trained for classes {list(classes)} but base.classes is {list(base.labels)}"
        )
    size = int(meta["image_size"])
    test, (v_logits, v_labels), (t_logits, t_labels) = _score_splits(model, classes, paths, size, cfg.batch_size)

    choice = choose_calibration(v_logits, v_labels, base.seed)
    v_probs, t_probs = choice.calibrator.probabilities(v_logits), choice.calibrator.probabilities(t_logits)
    pos = cfg.positive_class
    threshold = _positive_threshold(classes, pos, v_labels, v_probs)
    m = classification_metrics(t_labels, t_probs, classes, pos, threshold, cfg.n_boot, base.seed, cfg.ci)
    cm = m.pop("confusion_matrix")
    cal = _calibration_summary(choice, t_labels, t_logits, cfg, base.seed)
    metrics = {
        **m,
        "calibration": cal,
        "valid_accuracy": float((v_probs.argmax(1) == v_labels).mean()),
    }
    # The shortcut audit: a model that keys on the source archive scores very differently per source.
    by_source = per_source_metrics(
        t_labels, t_probs, [r.get("source") or "" for r in test.rows], classes, cfg.n_boot, base.seed, cfg.ci
    )
    if by_source:
        metrics["per_source"] = by_source
    metrics["probes"] = shortcut_probes(model, test, classes, paths.raw, size, cfg.batch_size)

    # Every output appears together, or none does: no new metrics beside old figures after a failure. The
    # headline folder is built aside and swapped in whole (a class that is gone leaves no file behind).
    headline = paths.metrics
    with temp_dir(headline.parent, f".{headline.name}-") as build, staged_outputs() as out:
        for name, row in headline_files(metrics).items():
            write_json(build / name, row)
        calibration = {**choice.record(), "positive_class": pos, "threshold": threshold}  # what serving applies
        _write_reports(out, paths, metrics, cm, classes, calibration, test, t_labels, t_probs)
        _save_figures(out, paths.eval_reports, cm, classes, t_labels, t_probs, (cal["ece_ci_low"], cal["ece_ci_high"]))
        replace_dir(build, headline)
    auc = "n/a" if m.get("macro_auc") is None else f"{m['macro_auc']:.4f}"
    log.info("test accuracy %.4f (n=%d), macro AUC %s", m["accuracy"], len(t_labels), auc)
    log.info("shortcut probes: %s", metrics["probes"]["summary"])
    return EvalResult(paths.metrics_full, float(m["accuracy"]), m.get("macro_auc"))
