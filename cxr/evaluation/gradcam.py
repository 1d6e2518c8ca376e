"""The Grad-CAM step: batched CAMs on the test split, overlays per class, and where the model looks, measured."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from cxr.core.io import write_json
from cxr.core.paths import ResolvedPaths
from cxr.core.sections import Base, GradCam
from cxr.data.manifest import read_manifest
from cxr.data.masks import lesion_mask_path, lung_mask_path, read_mask
from cxr.data.rawstore import RawStore
from cxr.evaluation.headline import cam_headline
from cxr.model.cache import decoded_cache
from cxr.model.inference import load_trained, pick_device, read_temperature, softmax
from cxr.model.preprocess import to_input

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GradCamResult:
    """Where the overlays and the explanation metrics went."""

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


def gradcam(base: Base, cfg: GradCam, paths: ResolvedPaths, device: str = "auto") -> GradCamResult:
    """CAMs for every test image; overlays and a gallery per class; lung-energy and lesion-pointing metrics."""
    from cxr.evaluation.cam import compute_cams, energy_inside, gallery, iou_at_top, overlay, pointing_game

    model, meta = load_trained(paths.best_checkpoint, pick_device(device))
    classes, size, arch = tuple(meta["classes"]), int(meta["image_size"]), meta["arch"]
    test = read_manifest(paths.manifest).select("test")
    labels = test.labels(classes)
    images = np.array(decoded_cache(test, paths.raw, paths.cache, size))
    dev = next(model.parameters()).device
    x = to_input(torch.from_numpy(images).unsqueeze(1), dev)
    # One batched pass gives the predictions and the maps for the predicted class.
    cams, logits = compute_cams(model, x, None, arch, cfg.method, cfg.batch_size, return_logits=True,
                                layer=cfg.target_layer, stride=cfg.stride)
    # The probabilities a user of the served model sees: with the temperature evaluation chose on validation.
    if paths.calibration.is_file():
        temperature = read_temperature(paths.calibration)
    else:
        temperature = 1.0
        log.warning("%s: not found (run the evaluate step first); the galleries show uncalibrated probabilities",
                    paths.calibration)
    probs = softmax(logits, temperature)
    pred = probs.argmax(1)

    with RawStore(paths.raw) as store:
        lungs = [read_mask(store, lung_mask_path(r), size) for r in test.rows]
        lesions = [read_mask(store, lesion_mask_path(r), size) for r in test.rows]
    layer = cfg.target_layer or _layer_name(model, arch, cfg.stride)
    metrics: dict = {"method": cfg.method, "target_layer": layer, "images": len(test)}
    has_lung = np.array([m is not None for m in lungs])
    if has_lung.any():
        m = np.stack([lm for lm in lungs if lm is not None])
        energy = energy_inside(cams[has_lung], m)
        area = m.reshape(len(m), -1).mean(1)
        metrics["lung_energy"] = _mean(energy)
        metrics["lung_area_fraction"] = _mean(area)
        metrics["lung_energy_per_class"] = {
            c: _mean(energy[labels[has_lung] == i]) for i, c in enumerate(classes)
        }
        metrics["lung_mask_images"] = int(has_lung.sum())
    else:
        # Older releases of the dataset (the flat layout) ship no lung masks: say so rather than stay silent.
        metrics["lung_energy_absent"] = (
            f"no lung masks in {paths.raw} for the {len(test)} test images (<FOLDER>/masks/<name>; the dataset's "
            "older flat layout has none), so the share of CAM energy inside the lungs cannot be measured"
        )
        log.warning("Grad-CAM: %s", metrics["lung_energy_absent"])
    has_lesion = np.array([m is not None and m.any() for m in lesions])
    if has_lesion.any():
        m = np.stack([lm for lm, h in zip(lesions, has_lesion) if h])
        hits = pointing_game(cams[has_lesion], m)
        area = m.reshape(len(m), -1).mean(1)
        lesion_labels = labels[has_lesion]
        metrics["pointing_game"] = _mean(hits.astype(float))
        metrics["pointing_game_images"] = int(has_lesion.sum())
        # A uniformly random peak lands in the lesion with probability equal to its area fraction.
        metrics["pointing_game_chance"] = _mean(area)
        metrics["pointing_game_per_class"] = {
            c: _mean(hits[lesion_labels == i].astype(float)) for i, c in enumerate(classes) if (lesion_labels == i).any()
        }
        metrics["pointing_game_chance_per_class"] = {
            c: _mean(area[lesion_labels == i]) for i, c in enumerate(classes) if (lesion_labels == i).any()
        }
        metrics["lesion_iou"] = _mean(iou_at_top(cams[has_lesion], m))
        metrics["lesion_energy"] = _mean(energy_inside(cams[has_lesion], m))

    out = paths.gradcam_reports
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    written = 0
    for c, cases in select_cases(labels, probs, len(classes), cfg.per_class).items():
        folder = out / classes[c].replace(" ", "_")
        folder.mkdir()
        raw, maps, titles = [], [], []
        for rank, (i, kind) in enumerate(cases):
            tile = overlay(images[i], cams[i])
            name = f"{kind}-{rank:02d}-{Path(test.rows[i]['path']).stem}.png"
            cv2.imwrite(str(folder / name), cv2.cvtColor(tile, cv2.COLOR_RGB2BGR))
            raw.append(images[i])
            maps.append(cams[i])
            titles.append(f"{kind}: {classes[pred[i]]} {probs[i, pred[i]]:.2f}")
            written += 1
        if raw:
            gallery(raw, maps, titles).savefig(
                out / f"gallery-{classes[c].replace(' ', '_')}.png", dpi=90, bbox_inches="tight"
            )
    write_json(paths.cam_metrics_full, metrics)
    write_json(paths.cam_metrics, cam_headline(metrics))
    log.info("Grad-CAM: %d overlays in %s; %s", written, out, {k: v for k, v in metrics.items() if "per_class" not in k})
    return GradCamResult(out, paths.cam_metrics_full, written)
