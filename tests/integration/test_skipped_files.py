"""Files left out under ``download.policy: skip`` are listed wherever the data is described, not only in a log."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from conftest import make_project, tiny_params
from PIL import Image

from cxr.core.config import load_settings

pytestmark = pytest.mark.slow

CLASSES = ("COVID", "Normal", "Lung_Opacity", "Viral Pneumonia")


def _local_source(folder: Path) -> Path:
    """A loose v5 dataset with one undecodable image, one above the pixel limit, and a corrupt sheet."""
    from cxr.data.synthetic import generate

    generate(folder, {c: 20 for c in CLASSES}, size=96, seed=0)
    (folder / "Normal" / "images" / "Normal-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    Image.new("L", (800, 800)).save(folder / "COVID" / "images" / "COVID-huge.png")
    (folder / "COVID.metadata.xlsx").write_bytes(b"PK\x03\x04 not a workbook")
    return folder


def test_skipped_files_reach_the_data_report_and_its_markdown(tmp_path: Path) -> None:
    from cxr.data.download import download
    from cxr.data.split import split
    from cxr.reporting.summary import data_report_markdown

    source = _local_source(tmp_path / "source")
    params = tiny_params(
        download={"source": "local", "policy": "skip", "max_pixels": 500 * 500, "local": {"path": str(source)}}
    )
    root = make_project(tmp_path / "project", params)
    s = load_settings(root / "params.yaml")
    paths = s.paths(root)
    download(s.base, s.download, paths)
    # Teammates on a shared machine can read the data (as the umask allows), not only its owner.
    assert stat.S_IMODE(paths.raw.stat().st_mode) & 0o055 == 0o055 & ~_umask()
    split(s.base, s.split, paths)

    report = json.loads(paths.data_report.read_text())
    skipped = {r["path"]: r["reason"] for r in report["skipped"]}
    assert set(skipped) == {"Normal/images/Normal-broken.png", "COVID/images/COVID-huge.png", "COVID.metadata.xlsx"}
    assert "download.max_pixels" in skipped["COVID/images/COVID-huge.png"]
    assert "cannot read metadata sheet" in skipped["COVID.metadata.xlsx"]
    assert report["images"] == 80
    md = data_report_markdown(report)
    assert "Left out of the data (download.policy 'skip'): 3 file(s)." in md
    assert "| `COVID/images/COVID-huge.png` | too large (800x800" in md


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
