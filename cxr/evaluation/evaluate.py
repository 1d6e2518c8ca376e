"""The evaluation step: the only reader of the test split; metrics with intervals, calibration and figures."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from cxr.core.io import write_csv, write_json
from cxr.core.paths import ResolvedPaths
from cxr.core.sections import Base, Evaluate
from cxr.data.manifest import Manifest, read_manifest
from cxr.model.cache import CachedImages, decoded_cache
from cxr.model.inference import load_trained, pick_device, predict, softmax

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalResult:
    """Where the metrics went and the headline numbers."""

    metrics: Path
    accuracy: float
    macro_auc: float | None


def split_logits(
    model: torch.nn.Module, manifest: Manifest, classes, paths: ResolvedPaths, size: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of one split, from the decoded cache."""
    images = decoded_cache(manifest, paths.raw, paths.cache, size)
    loader = DataLoader(CachedImages(images, manifest.labels(classes)), batch_size=batch_size, shuffle=False)
    device = next(model.parameters()).device
    return predict(model, loader, device)


def evaluate(base: Base, cfg: Evaluate, paths: ResolvedPaths, device: str = "auto") -> EvalResult:
    """Score the best checkpoint on the test split; calibrate and choose thresholds on valid only."""
    from cxr.evaluation import figures
    from cxr.evaluation.headline import headline_metrics, sensitivity_by_class
    from cxr.evaluation.probes import shortcut_probes
    from cxr.stats.calibration import calibration, fit_temperature, temperature_check
    from cxr.stats.classification import choose_threshold, classification_metrics, per_source_metrics

    model, meta = load_trained(paths.best_checkpoint, pick_device(device))
    classes = tuple(meta["classes"])
    if classes != base.labels:
        raise ValueError(
            f"{paths.best_checkpoint}: trained for classes {list(classes)} but base.classes is {list(base.labels)}"
        )
    size = int(meta["image_size"])
    manifest = read_manifest(paths.manifest)
    valid, test = manifest.select("valid"), manifest.select("test")
    if len(test) == 0:
        raise ValueError(f"{paths.manifest}: the test split is empty")
    v_logits, v_labels = split_logits(model, valid, classes, paths, size, cfg.batch_size)
    t_logits, t_labels = split_logits(model, test, classes, paths, size, cfg.batch_size)

    fitted = float(fit_temperature(v_logits, v_labels))
    check = temperature_check(v_logits, v_labels, seed=base.seed)
    # Serving and every figure below use the temperature only when it helps on held-out validation folds.
    temperature = fitted if check["helps"] else 1.0
    log.info("temperature %.3f fitted on validation %s (%s: %.4f scaled vs %.4f unscaled)", fitted,
             "used" if check["helps"] else "not used", check["criterion"], check["valid_cv_nll_scaled"],
             check["valid_cv_nll_unscaled"])
    v_probs, t_probs = softmax(v_logits, temperature), softmax(t_logits, temperature)
    threshold = None
    pos = cfg.positive_class
    if pos is not None and len(classes) > 2:
        idx = classes.index(pos)
        threshold = float(choose_threshold((v_labels == idx).astype(int), v_probs[:, idx]))
    m = classification_metrics(t_labels, t_probs, classes, pos, threshold, cfg.n_boot, base.seed, cfg.ci)
    cal = calibration(t_labels, t_probs)
    uncal = calibration(t_labels, softmax(t_logits))
    # Reported, never used for any choice: what the fitted temperature does to held-out (test) calibration.
    fitted_ece = calibration(t_labels, softmax(t_logits, fitted))["ece"]
    cm = m.pop("confusion_matrix")
    metrics = {
        **m,
        "calibration": {
            "temperature": temperature,
            "temperature_fitted": fitted,
            "temperature_applied": check["helps"],
            "criterion": check["criterion"],
            "valid_cv_nll_scaled": check["valid_cv_nll_scaled"],
            "valid_cv_nll_unscaled": check["valid_cv_nll_unscaled"],
            "ece": cal["ece"],
            "brier": cal["brier"],
            "ece_uncalibrated": uncal["ece"],
            "ece_at_fitted_temperature": fitted_ece,
            "fitted_worsens_test_ece": bool(fitted_ece > uncal["ece"]),
        },
        "valid_accuracy": float((v_probs.argmax(1) == v_labels).mean()),
    }
    # The shortcut audit: a model that keys on the source archive scores very differently per source.
    by_source = per_source_metrics(
        t_labels, t_probs, [r.get("source") or "" for r in test.rows], classes, cfg.n_boot, base.seed, cfg.ci
    )
    if by_source:
        metrics["per_source"] = by_source
    metrics["probes"] = shortcut_probes(model, test, classes, paths.raw, size, cfg.batch_size)
    out = paths.eval_reports
    out.mkdir(parents=True, exist_ok=True)
    write_json(paths.metrics_full, metrics)
    write_json(paths.metrics, headline_metrics(metrics))
    write_json(paths.sensitivity, sensitivity_by_class(metrics))
    write_json(paths.confusion, {"classes": list(classes), "counts": cm})
    write_json(paths.calibration, {"temperature": temperature, "temperature_fitted": fitted,
                                   "temperature_applied": check["helps"], "criterion": check["criterion"],
                                   "positive_class": pos, "threshold": threshold})

    # The content hash lets the promotion gate pair two models' answers image by image.
    columns = ["path", "sha256", "actual", "predicted", *[f"p_{c}" for c in classes]]
    write_csv(paths.predictions, columns, (
        dict(zip(columns, [r["path"], r["sha256"], classes[y], classes[int(p.argmax())], *[f"{v:.6f}" for v in p]]))
        for r, y, p in zip(test.rows, t_labels, t_probs)))
    write_csv(paths.roc_points, ["class", "fpr", "tpr", "threshold"], figures.roc_points(t_labels, t_probs, classes))

    figs = {
        "confusion_matrix.png": figures.plot_confusion_matrix(np.asarray(cm), classes),
        "roc.png": figures.plot_roc(t_labels, t_probs, classes),
        "precision_recall.png": figures.plot_pr(t_labels, t_probs, classes),
        "reliability.png": figures.plot_reliability(t_labels, t_probs),
    }
    for name, fig in figs.items():
        fig.savefig(out / name, dpi=110, bbox_inches="tight")
    log.info("test accuracy %.4f (n=%d), macro AUC %s", m["accuracy"], len(t_labels), m.get("macro_auc"))
    log.info("shortcut probes: %s", metrics["probes"]["summary"])
    return EvalResult(paths.metrics_full, float(m["accuracy"]), m.get("macro_auc"))
