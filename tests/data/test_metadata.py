"""The metadata sheets: the real example read, a broken one named, sources from URLs."""

from __future__ import annotations

from pathlib import Path

import pytest
from ingest_support import SHARED

from cxr.data import metadata
from cxr.data.layout import DataError
from cxr.data.metadata import read_metadata

METADATA_XLSX = SHARED / "cxr-metadata-example" / "NORMAL.metadata.xlsx"


@pytest.mark.skipif(not METADATA_XLSX.is_file(), reason=f"metadata example not found at {METADATA_XLSX}")
def test_read_real_metadata() -> None:
    meta = read_metadata(METADATA_XLSX)
    assert len(meta) == 1341
    assert "NORMAL-1" in meta and "NORMAL-1341" in meta
    assert all(isinstance(v, str) and v for v in meta.values())
    assert set(meta.values()) == {"kaggle.com/paultimothymooney/chest-xray-pneumonia"}


def test_read_metadata_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "COVID.metadata.xlsx"
    bad.write_text("not a workbook")
    with pytest.raises(DataError, match="COVID.metadata.xlsx"):
        read_metadata(bad)


def test_source_from_url() -> None:
    assert metadata.source_from_url("https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/data") == (
        "kaggle.com/c/rsna-pneumonia-detection-challenge"
    )
    assert (
        metadata.source_from_url("https://bimcv.cipf.es/bimcv-projects/bimcv-covid19/#1590")
        == "bimcv.cipf.es/bimcv-projects"
    )
    assert metadata.source_from_url("") == "unknown"
