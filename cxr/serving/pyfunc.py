"""The served model: an MLflow pyfunc that takes images and returns calibrated class probabilities.

Inputs, one image each: encoded bytes (PNG, JPEG), a base64 string of those bytes, or a uint8 array (H x W gray
or H x W x 3 RGB); in a DataFrame column ``image`` or a list. A file path only where the serving process allows
a folder (``CXR_SERVE_IMAGE_ROOT``, see cxr/serving/inputs.py). The output has
one column ``p_<class>`` per class, in the checkpoint's order, and ``label``. Decoding, resizing,
normalisation, the class order and the calibration map all travel inside the logged model, so a client
sends raw images and nothing else.
"""

from __future__ import annotations

import base64
import importlib.metadata
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd

from cxr.model.calibrate import Calibrator, read_calibration
from cxr.model.preprocess import MAX_PIXELS
from cxr.serving.inputs import IMAGE_COLUMN, IMAGE_ROOT_ENV, BadImage, as_items, image_root, item_name, load_one

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CHECKPOINT_ARTIFACT = "checkpoint"
CALIBRATION_ARTIFACT = "calibration"
DEFAULT_BATCH_SIZE = 32
#: ``download.source`` of a model trained on generated images (see cxr/data/synthetic.py).
SYNTHETIC_SOURCE = "synthetic"
SYNTHETIC_WARNING = (
    "this model was trained on synthetic images, not radiographs: its probabilities for real chest X-rays "
    "mean nothing, however confident (up to 0.9998 for a wrong class has been seen)"
)


def source_warning(data_source: str | None) -> str | None:
    """The warning a model trained on ``data_source`` carries, or None."""
    return SYNTHETIC_WARNING if data_source == SYNTHETIC_SOURCE else None


#: Distributions the served model imports: it decodes images and runs the model (cxr.model) and imports no
#: training, configuration or tracking code; mlflow unpickles it with cloudpickle.
SERVING_REQUIREMENTS: tuple[str, ...] = (
    "mlflow",
    "torch",
    "torchvision",
    "numpy",
    "pandas",
    "opencv-python-headless",
    "cloudpickle",
)


def prob_column(label: str) -> str:
    """The output column of one class's probability."""
    return f"p_{label}"


def pinned_requirements(names: Sequence[str] = SERVING_REQUIREMENTS) -> list[str]:
    """``name==version`` of the installed distributions, local suffixes such as ``+cu130`` stripped."""
    pins = []
    for name in names:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            raise RuntimeError(f"{name} is not installed; the served model needs it") from None
        pins.append(f"{name}=={version.split('+')[0]}")
    return pins


class CxrClassifier(mlflow.pyfunc.PythonModel):
    """Chest X-ray classifier: raw images in, calibrated probabilities per class and a label out."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Load the checkpoint (weights only) and the calibration the evaluate step chose from the model's artifacts."""
        import torch

        from cxr.model.inference import load_trained

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model, meta = load_trained(Path(context.artifacts[CHECKPOINT_ARTIFACT]), self.device)
        self.classes: tuple[str, ...] = tuple(meta["classes"])
        self.image_size = int(meta["image_size"])
        self.arch = str(meta["arch"])
        calibration = context.artifacts.get(CALIBRATION_ARTIFACT)
        self.calibrator = read_calibration(Path(calibration)) if calibration else Calibrator()
        config = context.model_config or {}
        self.batch_size = int(config.get("batch_size", DEFAULT_BATCH_SIZE))
        # download.max_pixels when it was registered (versions from before: ingestion's default).
        self.max_pixels = int(config.get("max_pixels", MAX_PIXELS))
        # Read when the model is loaded: the serving process's setting, fixed for its life.
        self.image_root = image_root()
        # download.source when it was registered (None for versions from before it was recorded).
        self.data_source: str | None = config.get("data_source")
        log.info(
            "loaded %s for %s at %d px, calibration %s on %s; images up to %s pixels; image files read from %s",
            self.arch,
            list(self.classes),
            self.image_size,
            self.calibrator.method,
            self.device,
            f"{self.max_pixels:,}",
            self.image_root or f"nowhere ({IMAGE_ROOT_ENV} is not set)",
        )
        warning = source_warning(self.data_source)
        if warning:
            log.warning("%s", warning)

    def preprocess(self, model_input: Any) -> np.ndarray:
        """The request's images as one (N, size, size) uint8 stack; an input that is no image is a BadImage."""
        try:
            items = as_items(model_input)
        except ValueError as err:
            raise BadImage(str(err)) from None
        images = [self.read_one(item, item_name(item, i)) for i, item in enumerate(items)]
        return np.stack(images) if images else np.zeros((0, self.image_size, self.image_size), np.uint8)

    def read_one(self, item: Any, name: str) -> np.ndarray:
        """One image at the model's size, or a BadImage naming it and why (HTTP 400, no traceback)."""
        try:
            return load_one(item, self.image_size, name, self.image_root, self.max_pixels)
        except (ValueError, OSError) as err:
            text = str(err)
            raise BadImage(text if text.startswith(f"{name}: ") else f"{name}: {text}") from None
        except Exception as err:  # a decoder's or numpy's own failure on an odd input: still that input's fault
            log.warning("%s: cannot be read as an image", name, exc_info=True)
            raise BadImage(f"{name}: cannot be read as an image ({type(err).__name__})") from None

    def input_tensor(self, images: np.ndarray) -> torch.Tensor:
        """Normalised model input (N, 1, H, W) on the model's device."""
        import torch

        from cxr.model.preprocess import to_input

        return to_input(torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1), self.device)

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Raw logits (N, K), computed in batches."""
        import torch

        out = [np.zeros((0, len(self.classes)), np.float32)]
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = self.input_tensor(images[start : start + self.batch_size])
                out.append(self.model(batch).float().cpu().numpy())
        return np.concatenate(out)

    @property
    def temperature(self) -> float:
        """The temperature applied (1 unless the calibration chosen is temperature scaling)."""
        return self.calibrator.temperature

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (N, K): the evaluate step's calibration map applied to the logits."""
        logits = self.logits(images).astype(np.float64)
        return self.calibrator.probabilities(logits) if len(logits) else logits

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        """One row per image: ``p_<class>`` for every class and the most probable ``label``."""
        probs = self.probabilities(self.preprocess(model_input))
        out = pd.DataFrame({prob_column(c): probs[:, i] for i, c in enumerate(self.classes)})
        out["label"] = [self.classes[int(i)] for i in probs.argmax(axis=1)] if len(probs) else []
        return out


def to_frame(images: Sequence[Any]) -> pd.DataFrame:
    """A request DataFrame (one ``image`` column) from any images, arrays included."""
    frame = pd.DataFrame({IMAGE_COLUMN: [None] * len(images)}, dtype=object)
    for i, image in enumerate(images):
        frame.at[i, IMAGE_COLUMN] = image  # item by item: pandas would otherwise try to unpack 2-D arrays
    return frame


def example_png(size: int = 32) -> bytes:
    """A small gray PNG (a smooth gradient): the logged input example."""
    import cv2

    ramp = np.linspace(0, 255, size, dtype=np.float32)
    image = ((ramp[None, :] + ramp[:, None]) / 2).astype(np.uint8)
    ok, buf = cv2.imencode(".png", image)
    if not ok:  # pragma: no cover - encoding a valid uint8 array does not fail
        raise RuntimeError("cannot encode the example PNG")
    return buf.tobytes()


def signature(classes: Sequence[str]) -> mlflow.models.ModelSignature:
    """Input: one column ``image`` of any type (path, bytes, base64, array); output: probabilities and label."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    # Optional: a request without it then reaches the model, which names the field it needs. Required, MLflow
    # refuses it first, with the whole request twice in the message (a 76 KB answer to a 38 KB request).
    inputs = Schema([ColSpec(AnyType(), IMAGE_COLUMN, required=False)])
    outputs = Schema([*(ColSpec("double", prob_column(c)) for c in classes), ColSpec("string", "label")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_pyfunc(
    checkpoint: Path,
    calibration: Path | None,
    name: str = "model",
    batch_size: int = DEFAULT_BATCH_SIZE,
    metadata: dict | None = None,
    max_pixels: int = MAX_PIXELS,
    data_source: str | None = None,
) -> mlflow.models.model.ModelInfo:
    """Log the classifier as an MLflow pyfunc model in the active run (starts one when none is active).

    ``max_pixels`` travels in the model's config: the largest image it decodes (``download.max_pixels``).
    ``data_source`` (``download.source``) travels in its config and metadata: a model trained on synthetic
    images says so in the log of whoever loads it, and ``cxr predict`` prints it.
    """
    import cxr
    from cxr.model.inference import load_checkpoint

    checkpoint = Path(checkpoint)
    meta = load_checkpoint(checkpoint)  # a missing, truncated or foreign checkpoint is refused here, naming it
    classes = [str(c) for c in meta["classes"]]
    artifacts = {CHECKPOINT_ARTIFACT: str(checkpoint)}
    if calibration is not None:
        read_calibration(calibration)  # fail here, not when the model is first served
        artifacts[CALIBRATION_ARTIFACT] = str(calibration)
    example = pd.DataFrame({IMAGE_COLUMN: [base64.b64encode(example_png()).decode("ascii")]})
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=CxrClassifier(),
        artifacts=artifacts,
        code_paths=[str(Path(cxr.__file__).parent)],
        signature=signature(classes),
        input_example=example,
        pip_requirements=pinned_requirements(),
        model_config={
            "batch_size": int(batch_size),
            "max_pixels": int(max_pixels),
            **({"data_source": str(data_source)} if data_source else {}),
        },
        metadata={
            "classes": classes,
            "image_size": int(meta["image_size"]),
            "arch": str(meta["arch"]),
            **({"data_source": str(data_source)} if data_source else {}),
            **(metadata or {}),
        },
    )


__all__ = [
    "CxrClassifier",
    "log_pyfunc",
    "prob_column",
    "pinned_requirements",
    "as_items",
    "load_one",
    "signature",
    "source_warning",
    "to_frame",
    "IMAGE_COLUMN",
    "BadImage",
]
