"""Batch prediction with a registered (or any MLflow) model: image files in, a CSV or JSON table out, optional Grad-CAM."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg"})
OUTPUT_SUFFIXES: frozenset[str] = frozenset({".csv", ".json"})
#: Images per pyfunc call: bounds the memory of the forward pass and of the CAMs.
CHUNK = 256


def collect_images(inputs: Sequence[Path]) -> list[Path]:
    """Files as given, folders searched recursively for .png/.jpg/.jpeg, in a stable order without repeats."""
    found: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            found.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    seen: set[Path] = set()
    unique = [p for p in found if not (p.resolve() in seen or seen.add(p.resolve()))]
    if not unique:
        raise ValueError(f"no .png/.jpg/.jpeg images in {', '.join(str(p) for p in inputs) or 'the inputs'}")
    return unique


def _overlay_names(paths: Sequence[Path]) -> list[str]:
    """One file name per image for its overlay: the stem, made unique with a counter."""
    names, used = [], set()
    for p in paths:
        name, n = f"{p.stem}.png", 1
        while name in used:
            n += 1
            name = f"{p.stem}_{n}.png"
        used.add(name)
        names.append(name)
    return names


def _write_table(rows: list[dict], columns: list[str], out: Path) -> None:
    """CSV or JSON (a list of records) by the suffix, written atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        if out.suffix.lower() == ".csv":
            import csv

            with tmp.open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
                writer.writeheader()
                writer.writerows(rows)
        else:
            tmp.write_text(json.dumps(rows, indent=2) + "\n")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def predict(
    model_uri: str,
    inputs: Sequence[Path],
    out: Path,
    gradcam_dir: Path | None = None,
    tracking_uri: str | None = None,
) -> Path:
    """Classify image files and folders with an MLflow model; write path, p_<class>..., label to CSV or JSON."""
    import mlflow

    from cxr.serving import load_one, to_frame

    out = Path(out)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"{out}: the output must end in .csv or .json")
    files = collect_images(inputs)
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(model_uri)
    clf = model.unwrap_python_model()
    # Every file is decoded before any output is written: a bad file stops the run, naming it, and leaves nothing.
    images = np.stack([load_one(p, clf.image_size, str(p)) for p in files])
    prob_columns = [f"p_{c}" for c in clf.classes]
    columns = ["path", *prob_columns, "label"] + (["gradcam"] if gradcam_dir is not None else [])
    names = _overlay_names(files)
    rows: list[dict] = []
    for start in range(0, len(files), CHUNK):
        chunk = images[start:start + CHUNK]
        result = model.predict(to_frame(list(chunk)))
        if gradcam_dir is not None:
            _gradcam(clf, chunk, result, files[start:start + CHUNK], names[start:start + CHUNK], Path(gradcam_dir))
        for i, (_, r) in enumerate(result.iterrows()):
            row = {"path": str(files[start + i]), **{c: float(r[c]) for c in prob_columns}, "label": r["label"]}
            if gradcam_dir is not None:
                row["gradcam"] = str(Path(gradcam_dir) / names[start + i])
            rows.append(row)
    _write_table(rows, columns, out)
    log.info("%d images classified with %s into %s", len(rows), model_uri, out)
    return out


def _gradcam(clf, images: np.ndarray, result, files: Sequence[Path], names: list[str], folder: Path) -> None:
    """Write a Grad-CAM overlay PNG for the predicted class of each image, at the file's own resolution."""
    import cv2

    from cxr.data import to_gray
    from cxr.explain import cam_figure, compute_cams

    labels = result["label"].tolist()
    targets = [clf.classes.index(label) for label in labels]
    cams = compute_cams(clf.model, clf.input_tensor(images), targets, clf.arch, batch_size=16)
    folder.mkdir(parents=True, exist_ok=True)
    for i, (cam, name) in enumerate(zip(cams, names)):
        path = folder / name
        # The map is drawn over the file as it is (it was decoded once already, so it decodes again).
        original = to_gray(cv2.imdecode(np.fromfile(files[i], np.uint8), cv2.IMREAD_UNCHANGED))
        title = f"predicted {labels[i]} (p = {float(result[f'p_{labels[i]}'].iloc[i]):.2f})"
        fig = cam_figure(original, cam, title)
        try:
            fig.savefig(path, dpi=fig.dpi)
        except OSError as err:
            raise OSError(f"{path}: cannot write the Grad-CAM overlay ({err})") from None


__all__ = ["predict", "collect_images", "IMAGE_SUFFIXES"]
