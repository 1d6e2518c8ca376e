"""Batch prediction with a registered (or any MLflow) model: image files in, a CSV or JSON table out, optional
Grad-CAM."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.core.io import write_csv, write_json

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
    if out.suffix.lower() == ".csv":
        write_csv(out, columns, rows)
    else:
        write_json(out, rows)


class ModelUnavailable(RuntimeError):
    """The model cannot be had: tracking server down, no such registered model or alias, or a failed load."""


@dataclass(frozen=True)
class PredictResult:
    """The table written, how many images were classified, the files that could not be read (path: why) and what
    the user must know about the model (trained on synthetic images), if anything."""

    out: Path
    predicted: int
    failed: dict[str, str]
    warning: str | None = None


def check_output(out: Path) -> Path:
    """The output table's path; anything but .csv or .json is refused before any work."""
    out = Path(out)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"{out}: the output must end in .csv or .json")
    return out


def load_model(model_uri: str, tracking_uri: str | None = None):
    """The pyfunc model at ``model_uri``; a dead tracking server, a missing model or alias is one clear error."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from cxr.ops.tracking import check_tracking

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    uri = mlflow.get_tracking_uri()
    if model_uri.startswith(("models:/", "runs:/")):
        # Before MLflow's own client, which retries an unreachable server for minutes.
        check_tracking(uri)
    if model_uri.startswith("models:/") and "@" in model_uri:
        name, alias = model_uri.removeprefix("models:/").rsplit("@", 1)
        try:
            mlflow.MlflowClient(uri).get_model_version_by_alias(name, alias)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise ModelUnavailable(
                    f"{model_uri}: there is no registered model {name!r} in {uri}; run the "
                    "pipeline (cxr run) or cxr register first"
                ) from None
            raise ModelUnavailable(
                f"{model_uri}: model {name!r} has no {alias!r} alias in {uri}; make a version "
                f"{alias} with 'cxr gate VERSION' or 'cxr promote VERSION --reason ...', or "
                "name one with --model models:/NAME/VERSION"
            ) from None
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except MlflowException as err:
        text = str(err.message or err).strip()
        first = text.splitlines()[0] if text else type(err).__name__
        raise ModelUnavailable(f"{model_uri}: cannot be loaded from {uri}: {first}") from None


def data_source(model, model_uri: str, tracking_uri: str | None = None) -> str | None:
    """``download.source`` of the data the model was trained on: from the logged model, else (versions logged
    before it travelled with the model) the registry version's ``data_source`` tag; None when unknown."""
    source = (model.metadata.metadata or {}).get("data_source")
    if source or not model_uri.startswith("models:/"):
        return source
    import mlflow
    from mlflow.exceptions import MlflowException

    name, _, ref = model_uri.removeprefix("models:/").partition("@")
    client = mlflow.MlflowClient(tracking_uri)
    try:
        if ref:
            mv = client.get_model_version_by_alias(name, ref)
        else:
            name, _, version = name.rpartition("/")
            mv = client.get_model_version(name, version)
    except (MlflowException, ValueError):
        return None
    return (mv.tags or {}).get("data_source")


def predict(
    model_uri: str,
    inputs: Sequence[Path],
    out: Path,
    gradcam_dir: Path | None = None,
    tracking_uri: str | None = None,
) -> PredictResult:
    """Classify image files and folders with an MLflow model; write path, p_<class>..., label, error to CSV or JSON.

    A file that cannot be read or decoded gets a row with its ``error`` and no probabilities; the others are
    classified. When none can be read nothing is written.
    """
    out = check_output(out)
    files = collect_images(inputs)
    model = load_model(model_uri, tracking_uri)

    from cxr.model.preprocess import load_image
    from cxr.serving.pyfunc import source_warning, to_frame

    # The model logs it when it loads (the served model too); the result carries it for the caller to repeat.
    warning = source_warning(data_source(model, model_uri, tracking_uri))

    clf = model.unwrap_python_model()
    prob_columns = [f"p_{c}" for c in clf.classes]
    columns = ["path", *prob_columns, "label"] + (["gradcam"] if gradcam_dir is not None else []) + ["error"]
    names = _overlay_names(files)
    rows: dict[int, dict] = {}
    failed: dict[str, str] = {}
    for start in range(0, len(files), CHUNK):
        images, kept = [], []
        for i in range(start, min(start + CHUNK, len(files))):
            try:
                # Read here, handed to the model as pixels: the model itself reads no files (see cxr/serving/inputs.py).
                images.append(load_image(files[i], clf.image_size, clf.max_pixels))
                kept.append(i)
            except (ValueError, OSError) as err:
                failed[str(files[i])] = str(err)
                log.warning("skipped %s", err)
                rows[i] = {
                    "path": str(files[i]),
                    **dict.fromkeys(prob_columns),
                    "label": None,
                    **({"gradcam": None} if gradcam_dir is not None else {}),
                    "error": str(err),
                }
        if not kept:
            continue
        chunk = np.stack(images)
        result = model.predict(to_frame(list(chunk)))
        if gradcam_dir is not None:
            _gradcam(clf, chunk, result, [files[i] for i in kept], [names[i] for i in kept], Path(gradcam_dir))
        for i, (_, r) in zip(kept, result.iterrows(), strict=True):
            row = {"path": str(files[i]), **{c: float(r[c]) for c in prob_columns}, "label": r["label"]}
            if gradcam_dir is not None:
                row["gradcam"] = str(Path(gradcam_dir) / names[i])
            rows[i] = {**row, "error": None}
    if len(failed) == len(files):
        raise ValueError(f"none of the {len(files)} images could be read ({next(iter(failed.values()))})")
    _write_table([rows[i] for i in range(len(files))], columns, out)
    predicted = len(files) - len(failed)
    log.info("%d images classified with %s into %s; %d unreadable", predicted, model_uri, out, len(failed))
    return PredictResult(out, predicted, failed, warning)


def _gradcam(clf, images: np.ndarray, result, files: Sequence[Path], names: list[str], folder: Path) -> None:
    """Write a Grad-CAM overlay PNG for the predicted class of each image, at the file's own resolution."""
    import cv2

    from cxr.evaluation.cam import compute_cams
    from cxr.evaluation.overlays import cam_figure
    from cxr.model.preprocess import to_gray

    labels = result["label"].tolist()
    targets = [clf.classes.index(label) for label in labels]
    cams = compute_cams(clf.model, clf.input_tensor(images), targets, clf.arch, batch_size=16)
    folder.mkdir(parents=True, exist_ok=True)
    for i, (cam, name) in enumerate(zip(cams, names, strict=True)):
        path = folder / name
        # The map is drawn over the file as it is (it was decoded once already, so it decodes again).
        original = to_gray(cv2.imdecode(np.fromfile(files[i], np.uint8), cv2.IMREAD_UNCHANGED))
        title = f"predicted {labels[i]} (p = {float(result[f'p_{labels[i]}'].iloc[i]):.2f})"
        fig = cam_figure(original, cam, title)
        try:
            fig.savefig(path, dpi=fig.dpi)
        except OSError as err:
            raise OSError(f"{path}: cannot write the Grad-CAM overlay ({err})") from None


__all__ = [
    "predict",
    "collect_images",
    "check_output",
    "load_model",
    "ModelUnavailable",
    "PredictResult",
    "IMAGE_SUFFIXES",
]
