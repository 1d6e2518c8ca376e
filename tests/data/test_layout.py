"""Dataset layouts: class folder names and their aliases, the dataset root found in the sample or nested, a missing
class named."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from ingest_support import CLASSES, SAMPLE, needs_sample, small_dataset

from cxr.data import layout
from cxr.data.ingest import ingest
from cxr.data.layout import CLASS_ALIASES, DataError, find_dataset_root


def test_class_aliases_map_old_names() -> None:
    assert layout.canonical_class("COVID-19") == "COVID"
    assert layout.canonical_class("NORMAL") == "Normal"
    assert layout.canonical_class("viral_pneumonia") == "Viral Pneumonia"
    assert layout.canonical_class("Lung Opacity") == "Lung_Opacity"
    assert layout.canonical_class("images") is None
    assert set(CLASS_ALIASES.values()) == set(CLASSES)


@needs_sample
def test_find_root_of_sample_and_nested(tmp_path: Path) -> None:
    assert find_dataset_root(SAMPLE, CLASSES) == (SAMPLE, "v5")
    nested = tmp_path / "a" / "COVID-19_Radiography_Dataset"
    small_dataset(nested, 1)
    assert find_dataset_root(tmp_path, CLASSES) == (nested, "v5")


@needs_sample
def test_missing_class_names_it(tmp_path: Path) -> None:
    data = small_dataset(tmp_path / "src", 1)
    shutil.rmtree(data / "Lung_Opacity")
    with pytest.raises(DataError, match=r"Lung_Opacity.*missing.*src"):
        find_dataset_root(data, CLASSES)
    with pytest.raises(DataError, match="Lung_Opacity"):
        ingest(data, tmp_path / "dest", CLASSES)
    assert not (tmp_path / "dest").exists()


def test_no_dataset_at_all(tmp_path: Path) -> None:
    (tmp_path / "x" / "y").mkdir(parents=True)
    with pytest.raises(DataError, match="no class folders"):
        find_dataset_root(tmp_path, CLASSES)
