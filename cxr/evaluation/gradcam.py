"""The Grad-CAM step: batched CAMs on the test split, overlays per class, and where the model looks, measured."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from cxr.core.io import ensure_writable, staged_outputs, write_json
from cxr.core.paths import ResolvedPaths
from cxr.core.sections import Base, GradCam
from cxr.data.manifest import read_manifest
from cxr.data.masks import lesion_mask_path, lung_mask_path, read_mask
from cxr.data.rawstore import RawStore, replace_dir, temp_dir
from cxr.evaluation.headline import cam_headline
from cxr.model.cache import decoded_cache
from cxr.model.calibrate import Calibrator, read_calibration
from cxr.model.inference import load_trained, pick_device
from cxr.model.preprocess import to_input

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GradCamResult:
    """Where the overlays and the explanation metrics went, and how many overlays were drawn.

    The Grad-CAM headline figures (``dvc metrics show``) are in ``base.paths.cam_metrics``.
    """

    folder: Path
    metrics: Path
    images: int


def _mean(values: np.ndarray) -> float | None:
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None


def _layer_name(model: torch.nn.Module, arch: str, stride: int) -> str:
    """The dotted name of the module that ``stride`` picks for this model (for the metrics and the report)."""
    from cxr.evaluation.cam import target_layers

    (layer,) = target_layers(model, arch, stride=stride)
    return next(name for name, module in model.named_modules() if module is layer)


def select_cases(labels: np.ndarray, probs: np.ndarray, k: int, per_class: int) -> dict[int, list[tuple[int, str]]]:
    """Per true class: the most confident correct cases and the most confident mistakes."""
    pred = probs.argmax(1)
    conf = probs.max(1)
    out: dict[int, list[tuple[int, str]]] = {}
    for c in range(k):
        idx = np.flatnonzero(labels == c)
        right = idx[pred[idx] == c]
        wrong = idx[pred[idx] != c]
        right = right[np.argsort(-conf[right], kind="stable")][:per_class]
        wrong = wrong[np.argsort(-conf[wrong], kind="stable")][:per_class]
        out[c] = [(int(i), "correct") for i in right] + [(int(i), "wrong") for i in wrong]
    return out


def _served_calibration(paths: ResolvedPaths) -> Calibrator:
    """The calibration evaluation chose on validation (the probabilities a user of the served model sees), else none."""
    if paths.calibration.is_file():
        return read_calibration(paths.calibration)
    log.warning(
        "%s: not found (run the evaluate step first); the galleries show uncalibrated probabilities", paths.calibration
    )
    return Calibrator()


@dataclass(frozen=True)
class Intervals:
    """How the explanation figures' intervals are drawn: the evaluate step's resamples and level, the base seed."""

    n_boot: int = 1000
    ci: float = 0.95
    seed: int = 0

    def put(self, out: dict, name: str, values: np.ndarray, labels: np.ndarray) -> None:
        """``name`` (the mean of the finite ``values``) and its interval into ``out``, images resampled per class."""
        from cxr.stats.bootstrap import bootstrap_mean, put_with_ci

        point, samples = bootstrap_mean(values, labels, self.n_boot, self.seed)
        put_with_ci(out, name, point, samples, self.ci)


def _by_class(values: np.ndarray, labels: np.ndarray, classes: Sequence[str], present_only: bool = False) -> dict:
    """Mean of ``values`` per true class, by class name; ``present_only``: only the classes among ``labels``."""
    return {c: _mean(values[labels == i]) for i, c in enumerate(classes) if not present_only or (labels == i).any()}


def _lung_metrics(
    cams: np.ndarray, lungs: list, labels: np.ndarray, classes: Sequence[str], raw: Path, boot: Intervals
) -> dict:
    """Share of CAM energy inside the lungs against the lungs' area; or, without lung masks, why it is missing."""
    from cxr.evaluation.localisation import energy_inside

    has_lung = np.array([m is not None for m in lungs])
    if not has_lung.any():
        # Older releases of the dataset (the flat layout) ship no lung masks: say so rather than stay silent.
        absent = (
            f"no lung masks in {raw} for the {len(lungs)} test images (<FOLDER>/masks/<name>; the dataset's "
            "older flat layout has none), so the share of CAM energy inside the lungs cannot be measured"
        )
        log.warning("Grad-CAM: %s", absent)
        return {"lung_energy_absent": absent}
    m = np.stack([lm for lm in lungs if lm is not None])
    energy = energy_inside(cams[has_lung], m)
    out: dict = {}
    boot.put(out, "lung_energy", energy, labels[has_lung])
    return {
        **out,
        "lung_area_fraction": _mean(m.reshape(len(m), -1).mean(1)),
        "lung_energy_per_class": _by_class(energy, labels[has_lung], classes),
        "lung_mask_images": int(has_lung.sum()),
    }


def _lesion_metrics(
    cams: np.ndarray, lesions: list, labels: np.ndarray, classes: Sequence[str], boot: Intervals
) -> dict:
    """The pointing game against chance, IoU and energy inside the lesions; empty without lesion masks."""
    from cxr.evaluation.localisation import energy_inside, iou_at_top, pointing_game

    has_lesion = np.array([m is not None and m.any() for m in lesions])
    if not has_lesion.any():
        return {}
    m = np.stack([lm for lm, h in zip(lesions, has_lesion, strict=True) if h])
    hits = pointing_game(cams[has_lesion], m).astype(float)
    # A uniformly random peak lands in the lesion with probability equal to its area fraction.
    area = m.reshape(len(m), -1).mean(1)
    lesion_labels = labels[has_lesion]
    out: dict = {}
    boot.put(out, "pointing_game", hits, lesion_labels)
    out.update(
        {
            "pointing_game_images": int(has_lesion.sum()),
            "pointing_game_chance": _mean(area),
            "pointing_game_per_class": _by_class(hits, lesion_labels, classes, present_only=True),
            "pointing_game_chance_per_class": _by_class(area, lesion_labels, classes, present_only=True),
        }
    )
    boot.put(out, "lesion_iou", iou_at_top(cams[has_lesion], m), lesion_labels)
    boot.put(out, "lesion_energy", energy_inside(cams[has_lesion], m), lesion_labels)
    return out


def read_masks(rows: Sequence[dict[str, str]], raw: Path, size: int) -> tuple[list, list]:
    """The lung masks and the lesion masks of ``rows`` at ``size`` (None where an image has none)."""
    with RawStore(raw) as store:
        lungs = [read_mask(store, lung_mask_path(r), size) for r in rows]
        lesions = [read_mask(store, lesion_mask_path(r), size) for r in rows]
    return lungs, lesions


def localisation_metrics(
    cams: np.ndarray,
    rows: Sequence[dict[str, str]],
    labels: np.ndarray,
    classes: Sequence[str],
    raw: Path,
    size: int,
    boot: Intervals = Intervals(),
    masks: tuple[list, list] | None = None,
) -> dict:
    """Where the maps of the test images fall: inside the lungs (where masked) and on the lesions (where known),
    each mean with its bootstrap interval over the images. ``masks``: :func:`read_masks`' answer, read once."""
    lungs, lesions = masks if masks is not None else read_masks(rows, raw, size)
    return {
        **_lung_metrics(cams, lungs, labels, classes, raw, boot),
        **_lesion_metrics(cams, lesions, labels, classes, boot),
        "bootstrap": {"n_boot": boot.n_boot, "ci": boot.ci, "seed": boot.seed, "stratified": True},
    }


def write_overlays(
    out: Path,
    images: np.ndarray,
    cams: np.ndarray,
    probs: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    rows: Sequence[dict[str, str]],
    per_class: int,
) -> int:
    """Into the empty folder ``out``: per class a folder of overlays of its chosen cases and a gallery of them; the
    overlay count."""
    from cxr.evaluation.overlays import gallery, overlay

    pred = probs.argmax(1)
    written = 0
    for c, cases in select_cases(labels, probs, len(classes), per_class).items():
        folder = out / classes[c].replace(" ", "_")
        folder.mkdir()
        for rank, (i, kind) in enumerate(cases):
            name = f"{kind}-{rank:02d}-{Path(rows[i]['path']).stem}.png"
            cv2.imwrite(str(folder / name), cv2.cvtColor(overlay(images[i], cams[i]), cv2.COLOR_RGB2BGR))
        written += len(cases)
        if cases:
            titles = [f"{kind}: {classes[pred[i]]} {probs[i, pred[i]]:.2f}" for i, kind in cases]
            gallery([images[i] for i, _ in cases], [cams[i] for i, _ in cases], titles).savefig(
                out / f"gallery-{classes[c].replace(' ', '_')}.png", dpi=90, bbox_inches="tight"
            )
    return written


def gradcam(
    base: Base, cfg: GradCam, paths: ResolvedPaths, device: str = "auto", n_boot: int = 1000, ci: float = 0.95
) -> GradCamResult:
    """CAMs for every test image; overlays and a gallery per class; lung-energy and lesion-pointing metrics, each with
    its bootstrap interval (``n_boot`` resamples at level ``ci``: the evaluate step's, so every test figure has one)."""
    from cxr.evaluation.cam import Smoothing, compute_cams

    ensure_writable(paths.gradcam_reports.parent, paths.cam_metrics.parent)  # before the minutes of work
    model, meta = load_trained(paths.best_checkpoint, pick_device(device))
    classes, size, arch = tuple(meta["classes"]), int(meta["image_size"]), meta["arch"]
    test = read_manifest(paths.manifest).select("test")
    labels = test.labels(classes)
    images = np.array(decoded_cache(test, paths.raw, paths.cache, size))
    x = to_input(torch.from_numpy(images).unsqueeze(1), next(model.parameters()).device)
    # One batched pass gives the predictions and the maps for the predicted class.
    cams, logits = compute_cams(
        model,
        x,
        None,
        arch,
        cfg.method,
        cfg.batch_size,
        return_logits=True,
        layer=cfg.target_layer,
        stride=cfg.stride,
        desc="Grad-CAM on the test split",
        smoothing=Smoothing(cfg.aug_smooth, cfg.eigen_smooth),
    )
    probs = _served_calibration(paths).probabilities(logits)

    layer = cfg.target_layer or _layer_name(model, arch, cfg.stride)
    metrics: dict = {
        "method": cfg.method,
        "aug_smooth": cfg.aug_smooth,
        "eigen_smooth": cfg.eigen_smooth,
        "target_layer": layer,
        "images": len(test),
    }
    boot = Intervals(n_boot, ci, base.seed)
    metrics.update(localisation_metrics(cams, test.rows, labels, classes, paths.raw, size, boot))
    out = paths.gradcam_reports
    # The folder is built aside and swapped in, with the headline file: a failure leaves the old outputs whole.
    with temp_dir(out.parent, f".{out.name}-") as build, staged_outputs() as staged:
        written = write_overlays(build, images, cams, probs, labels, classes, test.rows, cfg.per_class)
        write_json(build / paths.cam_metrics_full.relative_to(out), metrics)
        staged.write_json(paths.cam_metrics, cam_headline(metrics))
        replace_dir(build, out)
    log.info(
        "Grad-CAM: %d overlays in %s; %s", written, out, {k: v for k, v in metrics.items() if "per_class" not in k}
    )
    return GradCamResult(out, paths.cam_metrics_full, written)
