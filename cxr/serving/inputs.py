"""What a request to the served model may hold, and how each image in it is read.

A request's images arrive as a DataFrame column ``image``, a mapping ``{"image": [...]}`` or a list; each is
encoded bytes (PNG, JPEG), a base64 string of them, or a uint8 array (H x W gray or H x W x 3 RGB). A file path
is read only when the serving process allows it (``CXR_SERVE_IMAGE_ROOT``) and the file lies in that folder: a
request to a network endpoint carries images, not names of files on the server. An input that is not a readable
image is a ``BadImage``: the scoring server answers it with HTTP 400.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from cxr.model.preprocess import MAX_PIXELS

IMAGE_COLUMN = "image"

_BASE64 = re.compile(r"^[A-Za-z0-9+/=_-]+$")

#: The serving process's setting that lets a request name image files: a folder, the only place files are read
#: from. Unset, the served model opens no file at all.
IMAGE_ROOT_ENV = "CXR_SERVE_IMAGE_ROOT"
_MAX_PATH = 4096


#: The longest error message a client reads: a position and a reason, never a request's values.
MAX_MESSAGE = 400


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class BadImage(mlflow.exceptions.MlflowException, ValueError):
    """An input that is not a readable image: the scoring server answers it with HTTP 400 and this message.

    The message stays as given. MLflow's scoring server rewrites the message of any MlflowException from predict to
    "Failed to predict data '<the whole request>'. Error: <message>": a request of many MB came back in its answer
    (and went to the server's log), base64 images, paths and all. The reason names the image by its position.
    """

    def __init__(self, message: str) -> None:
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        super().__init__(shorten(message, MAX_MESSAGE), error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        """The reason, as first given."""
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        if "_message" not in self.__dict__:  # set by MlflowException.__init__; later rewrites are ignored
            self._message = value


def _no_image_field(names: Sequence[Any]) -> str:
    """The answer to a request without an ``image`` field: the field it needs and, when seen, the names it has."""
    given = ""
    if len(names):
        shown = ", ".join(repr(shorten(str(n), 40)) for n in list(names)[:5])
        given = f" (it has {shown}{f' and {len(names) - 5} more' if len(names) > 5 else ''})"
    return (
        f"no {IMAGE_COLUMN!r} field in the request{given}: send the images as "
        f'{{"inputs": {{"{IMAGE_COLUMN}": [...]}}}}, {{"inputs": [...]}} or a dataframe with an "{IMAGE_COLUMN}" column'
    )


def _expand(values: Sequence[Any]) -> list:
    """Cells as images: a cell holding a list of paths, bytes or base64 strings is that many images.

    MLflow turns ``{"image": ["<base64>", ...]}`` (the JSON ``inputs`` form, or a dict given to pyfunc) into a
    one-row frame whose cell is the whole list. A list of strings or bytes is never one image (an image given
    as numbers is an array), so expanding it is unambiguous.
    """
    out: list = []
    for value in values:
        if isinstance(value, np.ndarray) and value.dtype == object and value.ndim == 1:
            value = list(value)
        if (
            isinstance(value, (list, tuple))
            and value
            and all(isinstance(v, (str, bytes, bytearray, Path)) for v in value)
        ):
            out.extend(value)
        else:
            out.append(value)
    return out


def _cells(values: list) -> list:
    """The images of a column: ``{"image": []}`` arrives as one row holding an empty list, which is no image."""
    if len(values) == 1:
        only = values[0]
        if (isinstance(only, (list, tuple)) and not only) or (isinstance(only, np.ndarray) and only.shape == (0,)):
            return []
    return _expand(values)


def as_items(model_input: Any) -> list:
    """The images of a request as a list: a DataFrame's ``image`` column, a Series, a list, or one image.

    A request without images is an empty list (answered with no rows, as an empty DataFrame is). A request without
    the ``image`` field is a ValueError naming that field and the names it has, never their values; through MLflow
    the model sees no names (MLflow drops the fields the signature does not declare).
    """
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN in model_input.columns:
            return _cells(list(model_input[IMAGE_COLUMN]))
        if list(model_input.columns) == [0]:  # a list given straight to the Python model: one unnamed column
            return _cells(list(model_input.iloc[:, 0]))
        raise ValueError(_no_image_field(list(model_input.columns)))
    if isinstance(model_input, pd.Series):
        return _cells(list(model_input))
    if isinstance(model_input, dict):
        if IMAGE_COLUMN not in model_input:
            raise ValueError(_no_image_field(list(model_input)))
        value = model_input[IMAGE_COLUMN]
        return _expand(list(value)) if isinstance(value, (list, tuple)) else [value]
    if isinstance(model_input, np.ndarray) and model_input.dtype != object:
        # One array is one image (H x W or H x W x 3); a stack of gray images is (N, H, W).
        if model_input.ndim == 2 or (model_input.ndim == 3 and model_input.shape[2] in (3, 4)):
            return [model_input]
        if model_input.ndim in (3, 4):
            return list(model_input)
        raise ValueError(f"an image array must be H x W or H x W x 3, got shape {model_input.shape}")
    if isinstance(model_input, (str, bytes, bytearray, memoryview, Path)):
        return [model_input]
    if isinstance(model_input, (list, tuple, np.ndarray)):
        return list(model_input)
    raise ValueError(
        f"unsupported input type {type(model_input).__name__}; send a DataFrame with an "
        f"{IMAGE_COLUMN!r} column or a list of images"
    )


def _from_base64(text: str) -> bytes | None:
    """Bytes of a base64 (or data-URI) string, or None when it is not base64."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    compact = "".join(text.split())  # base64.encodebytes wraps lines
    if len(compact) < 8 or not _BASE64.match(compact):
        return None
    try:
        if "-" in compact or "_" in compact:
            return base64.urlsafe_b64decode(compact + "=" * (-len(compact) % 4))
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def image_root(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The folder ``CXR_SERVE_IMAGE_ROOT`` names, resolved, or None: no file is read. Not a folder is an error."""
    value = environ.get(IMAGE_ROOT_ENV, "").strip()
    if not value:
        return None
    root = Path(value).resolve()
    if not root.is_dir():
        raise ValueError(f"{IMAGE_ROOT_ENV}={value}: not a folder")
    return root


def allowed_file(item: str | Path, root: Path | None) -> Path | None:
    """The file ``item`` names when it lies in ``root``, symlinks resolved, else None (also with no root).

    A relative name is taken in the root. A name outside the root as written is refused before the file system is
    asked anything, and a name inside it that resolves elsewhere (a symlink) is refused too: no answer tells what
    exists outside the root.
    """
    text = str(item)
    if root is None or not text or len(text) > _MAX_PATH or "\x00" in text:
        return None
    named = Path(os.path.normpath(root / text))  # an absolute name replaces the root
    if not named.is_relative_to(root):
        return None
    try:
        resolved = named.resolve(strict=True)
        return resolved if resolved.is_relative_to(root) and resolved.is_file() else None
    except (OSError, RuntimeError):  # missing, unreadable, a symlink loop
        return None


def _refused(name: str, root: Path | None) -> str:
    """Why a string is no image: the same words whether or not a file of that name exists anywhere."""
    if root is None:
        return f"{name}: not base64-encoded image data (this server reads no files: send the image's bytes, base64)"
    return f"{name}: neither base64-encoded image data nor an image file in the folder this server reads from"


def _as_array(item: np.ndarray | list, name: str, max_pixels: int) -> np.ndarray:
    """An image given as numbers, checked: H x W or H x W x 1/3/4, at most ``max_pixels``, finite values 0..255."""
    from cxr.model.preprocess import check_pixels

    try:
        array = np.asarray(item)
    except (ValueError, TypeError):  # rows of unequal length
        raise ValueError(f"{name}: an image array must be H x W or H x W x 3 (its rows differ in length)") from None
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)) or array.size == 0:
        raise ValueError(f"{name}: an image array must be H x W or H x W x 3, got shape {array.shape}")
    check_pixels(array.shape[1], array.shape[0], name, max_pixels)
    if array.dtype != np.uint8:
        if array.dtype.kind not in "iuf":
            raise ValueError(f"{name}: an image array must hold uint8 values 0..255 (got {array.dtype})")
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
            raise ValueError(f"{name}: an image array must hold uint8 values 0..255 (got {array.dtype} outside them)")
        array = array.astype(np.uint8)
    return array


def load_one(item: Any, size: int, name: str, root: Path | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """One input image as a ``size`` x ``size`` uint8 gray array; errors name the position.

    A path (a string or a ``Path``) is read only when it lies in ``root``; anything else is decoded as it is. An
    image of more than ``max_pixels`` pixels is refused, encoded ones from their header before any decoding.
    """
    from cxr.model.preprocess import decode

    if isinstance(item, (str, Path)):
        # A file wins over base64: a short name like "abcdefgh" is valid base64 but meant as a file.
        path = allowed_file(item, root)
        if path is not None:
            try:
                data = path.read_bytes()
            except OSError:
                raise ValueError(_refused(name, root)) from None
            return decode(data, size, name, max_pixels)
        data = _from_base64(item) if isinstance(item, str) else None
        if data is None:
            raise ValueError(_refused(name, root))
        return decode(data, size, name, max_pixels)
    if isinstance(item, (bytes, bytearray, memoryview)):
        return decode(bytes(item), size, name, max_pixels)
    if isinstance(item, (np.ndarray, list)):
        return decode(_as_array(item, name, max_pixels), size, name, max_pixels)
    raise ValueError(
        f"{name}: unsupported image type {type(item).__name__} (expected bytes, a base64 string or a uint8 array)"
    )


def item_name(item: Any, index: int) -> str:
    """How an error refers to an input: its position in the request (a path is not repeated back either)."""
    return f"image[{index}]"
