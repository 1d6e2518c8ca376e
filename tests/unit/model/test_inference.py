"""Inference helpers: the calibration temperature read from the evaluate step's file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_read_temperature_rejects_bad_files(tmp_path: Path) -> None:
    from cxr.model.inference import read_temperature

    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"threshold": 0.3}))
    with pytest.raises(ValueError, match="calibration.json: 'temperature'"):
        read_temperature(path)
    path.write_text(json.dumps({"temperature": -1}))
    with pytest.raises(ValueError, match="positive"):
        read_temperature(path)
    path.write_text(json.dumps({"temperature": 1.5}))
    assert read_temperature(path) == 1.5
    with pytest.raises(FileNotFoundError, match="evaluate"):
        read_temperature(tmp_path / "nope.json")
