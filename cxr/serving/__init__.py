"""Serving: the MLflow pyfunc model that takes raw images, and batch prediction (``cxr predict``)."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # Registered versions pickle their model class by import path. Versions registered before the package was
    # laid out by job name ``cxr.serving.CxrClassifier``: resolved here, on demand, so they still load.
    if name == "CxrClassifier":
        from cxr.serving.pyfunc import CxrClassifier

        return CxrClassifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
