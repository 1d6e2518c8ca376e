"""Tests of cxr.data.ingest on the real sample and on planted faults."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from ingest_support import (
    CLASSES,
    FAULTS,
    SAMPLE,
    _truncated_png,
    manifest,
    needs_sample,
    png_bytes,
    small_dataset,
    xray_like,
)

from cxr.data.ingest import ingest
from cxr.data.layout import DataError, find_dataset_root


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(path: Path) -> dict[str, str]:
    """relpath -> sha256 of every file under path."""
    return {p.relative_to(path).as_posix(): sha256_file(p) for p in sorted(path.rglob("*")) if p.is_file()}


def zip_folder(folder: Path, archive: Path, top: str | None = None) -> Path:
    """Zip a folder (stored), optionally under a top-level folder name."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                rel = p.relative_to(folder).as_posix()
                zf.write(p, f"{top}/{rel}" if top else rel)
    return archive


# ----------------------------------------------------------------------------- the real sample


@needs_sample
@pytest.mark.parametrize("workers", [1, 4])
def test_ingest_sample(tmp_path: Path, workers: int) -> None:
    dest = tmp_path / "data" / "raw"
    report = ingest(SAMPLE, dest, CLASSES, expected_counts={"COVID": 150, "Normal": 150}, workers=workers)
    assert report.counts == {"COVID": 150, "Normal": 150, "Lung_Opacity": 1, "Viral Pneumonia": 150}
    assert report.masks == {c: 0 for c in CLASSES}
    assert report.layout == "v5"
    assert report.ok and not report.bad and not report.duplicates and not report.count_mismatch
    assert sum(report.sources["COVID"].values()) == 150
    expected = manifest()
    got = tree(dest)
    assert got == expected  # same relative paths, bytes identical to the source
    assert not any(dest.glob("*/masks"))
    assert {r.path: r.sha256 for r in report.records} == expected
    json.dumps(report.to_dict(include_records=True))
    assert sorted(p.name for p in dest.parent.iterdir()) == ["raw"]  # no temp leftovers


@needs_sample
def test_zip_of_sample_ingests_like_folder(tmp_path: Path) -> None:
    archive = zip_folder(SAMPLE, tmp_path / "covid19-radiography-database.zip", top="COVID-19_Radiography_Dataset")
    report = ingest(archive, tmp_path / "dest", CLASSES, workers=2)
    assert report.counts == {"COVID": 150, "Normal": 150, "Lung_Opacity": 1, "Viral Pneumonia": 150}
    assert tree(tmp_path / "dest") == manifest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["covid19-radiography-database.zip", "dest"]


@needs_sample
def test_reingest_replaces_dest_and_fail_keeps_it(tmp_path: Path) -> None:
    data = small_dataset(tmp_path / "src", 2)
    dest = tmp_path / "dest"
    ingest(data, dest, CLASSES)
    (dest / "stale.txt").write_text("old")
    ingest(data, dest, CLASSES)
    assert not (dest / "stale.txt").exists()
    before = tree(dest)
    (data / "COVID" / "images" / "broken.png").write_bytes(b"")
    with pytest.raises(DataError, match="broken.png"):
        ingest(data, dest, CLASSES)
    assert tree(dest) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "src"]


@needs_sample
def test_expected_counts_mismatch_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = small_dataset(tmp_path / "src", 2)
    with caplog.at_level(logging.WARNING, logger="cxr.data.ingest"):
        report = ingest(data, tmp_path / "dest", CLASSES, expected_counts={"COVID-19": 3616})
    assert report.count_mismatch == {"COVID": {"expected": 3616, "found": 2}}
    assert not report.ok
    assert "expected 3616" in caplog.text


@needs_sample
def test_unrequested_class_folder_is_ignored(tmp_path: Path) -> None:
    data = small_dataset(tmp_path / "src", 2)
    report = ingest(data, tmp_path / "dest", ["COVID", "Normal"])
    assert report.counts == {"COVID": 2, "Normal": 2}
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["COVID", "Normal"]


# ----------------------------------------------------------------------------- planted faults


@needs_sample
@pytest.mark.parametrize("name", sorted(FAULTS))
def test_planted_fault_fail_and_skip(tmp_path: Path, name: str) -> None:
    data = small_dataset(tmp_path / "src", 3)
    make, reason = FAULTS[name]
    (data / "Normal" / "images" / name).write_bytes(make())
    dest = tmp_path / "dest"
    with pytest.raises(DataError) as err:
        ingest(data, dest, CLASSES, policy="fail")
    assert f"Normal/images/{name}" in str(err.value) and reason in str(err.value)
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]

    report = ingest(data, dest, CLASSES, policy="skip")
    assert [b.path for b in report.bad] == [f"Normal/images/{name}"]
    assert reason in report.bad[0].reason
    assert report.counts == {"COVID": 3, "Normal": 3, "Lung_Opacity": 1, "Viral Pneumonia": 3}
    assert not (dest / "Normal" / "images" / name).exists()
    assert not report.ok


@needs_sample
def test_skip_lists_all_bad_and_ingests_rest(tmp_path: Path) -> None:
    data = small_dataset(tmp_path / "src", 3)
    for i, name in enumerate(sorted(FAULTS)):
        cls = ("COVID", "Normal", "Viral Pneumonia")[i % 3]
        (data / cls / "images" / name).write_bytes(FAULTS[name][0]())
    with pytest.raises(DataError) as err:
        ingest(data, tmp_path / "dest", CLASSES, workers=3)
    assert all(name in str(err.value) for name in FAULTS)
    report = ingest(data, tmp_path / "dest", CLASSES, policy="skip", workers=3)
    assert sorted(b.path.rsplit("/", 1)[1] for b in report.bad) == sorted(FAULTS)
    assert sum(report.counts.values()) == 10
    assert len(list((tmp_path / "dest").rglob("*.*"))) == 10


@needs_sample
@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_corrupt_metadata_sheet_obeys_policy(tmp_path: Path, policy: str) -> None:
    data = small_dataset(tmp_path / "src", 2)
    (data / "COVID.metadata.xlsx").write_bytes(b"PK\x03\x04 not a workbook")
    dest = tmp_path / "dest"
    if policy == "fail":
        with pytest.raises(DataError, match=r"COVID\.metadata\.xlsx: cannot read metadata sheet.*policy 'skip'"):
            ingest(data, dest, CLASSES, policy=policy)
        assert not dest.exists()
        return
    report = ingest(data, dest, CLASSES, policy=policy)
    assert [b.path for b in report.bad] == ["COVID.metadata.xlsx"]
    assert "cannot read metadata sheet" in report.bad[0].reason
    assert report.counts["COVID"] == 2 and not (dest / "COVID.metadata.xlsx").exists()
    assert not report.ok


@needs_sample
def test_exact_duplicates_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = small_dataset(tmp_path / "src", 3)
    first = sorted((data / "COVID" / "images").iterdir())[0]
    shutil.copyfile(first, data / "COVID" / "images" / "copy-of-first.png")
    with caplog.at_level(logging.WARNING, logger="cxr.data.ingest"):
        report = ingest(data, tmp_path / "dest", CLASSES)
    group = [f"COVID/images/{first.name}", "COVID/images/copy-of-first.png"]
    assert sorted(report.duplicates) == [sorted(group)]
    assert "copy-of-first.png" in caplog.text and first.name in caplog.text
    assert report.counts["COVID"] == 4 and report.ok  # kept: the split groups them later

    shutil.copyfile(first, data / "Normal" / "images" / "Normal-999.png")
    report = ingest(data, tmp_path / "dest2", CLASSES)
    assert any("Normal/images/Normal-999.png" in g for g in report.conflicts)
    assert not report.ok


@needs_sample
def test_empty_class_folder_names_the_class(tmp_path: Path) -> None:
    data = small_dataset(tmp_path / "src", 2)
    for p in (data / "Lung_Opacity" / "images").iterdir():
        p.unlink()
    for policy in ("fail", "skip"):
        with pytest.raises(DataError, match=r"Lung_Opacity.*no images"):
            ingest(data, tmp_path / "dest", CLASSES, policy=policy)
    assert not (tmp_path / "dest").exists()


@needs_sample
def test_class_with_only_bad_images(tmp_path: Path) -> None:
    data = small_dataset(tmp_path / "src", 2)
    (data / "Lung_Opacity" / "images" / "Lung_Opacity-1.png").write_bytes(_truncated_png())
    with pytest.raises(DataError, match=r"Lung_Opacity.*no valid images"):
        ingest(data, tmp_path / "dest", CLASSES, policy="skip")
    assert not (tmp_path / "dest").exists()


# ----------------------------------------------------------------------------- other layouts


@needs_sample
def test_old_flat_layout_nested(tmp_path: Path) -> None:
    root = tmp_path / "archive" / "COVID-19 Radiography Database"
    files = {
        "COVID-19": sorted((SAMPLE / "COVID" / "images").iterdir())[:2],
        "NORMAL": sorted((SAMPLE / "Normal" / "images").iterdir())[:3],
        "Viral Pneumonia": sorted((SAMPLE / "Viral Pneumonia" / "images").iterdir())[:1],
    }
    for folder, srcs in files.items():
        (root / folder).mkdir(parents=True)
        for i, p in enumerate(srcs, 1):
            shutil.copyfile(p, root / folder / f"{folder} ({i}){p.suffix}")
    (root / "NORMAL" / "Thumbs.db").write_bytes(b"junk")
    classes = ["COVID", "Normal", "Viral Pneumonia"]
    assert find_dataset_root(tmp_path, classes) == (root, "flat")
    report = ingest(tmp_path / "archive", tmp_path / "dest", classes)
    assert report.layout == "flat"
    assert report.counts == {"COVID": 2, "Normal": 3, "Viral Pneumonia": 1}
    dest = tmp_path / "dest"
    assert sha256_file(dest / "COVID" / "images" / "COVID-19 (1).png") == sha256_file(files["COVID-19"][0])
    assert (dest / "Normal" / "images" / "NORMAL (3).png").is_file()
    assert (dest / "Viral Pneumonia" / "images" / "Viral Pneumonia (1).jpeg").is_file()
    assert any("Thumbs.db" in w for w in report.warnings)


def _write_sheet(path: Path, rows: list[tuple[str, str]]) -> None:
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["FILE NAME", "FORMAT", "SIZE", "URL"])
    for name, url in rows:
        ws.append([name, "PNG", "256*256", url])
    wb.save(path)


def test_v5_with_masks_and_metadata_in_zip(tmp_path: Path) -> None:
    root = tmp_path / "build" / "COVID-19_Radiography_Dataset"
    for cls in ("COVID", "Normal"):
        (root / cls / "images").mkdir(parents=True)
        (root / cls / "masks").mkdir(parents=True)
        for i in range(1, 4):
            (root / cls / "images" / f"{cls}-{i}.png").write_bytes(png_bytes(xray_like(hash((cls, i)) % 1000, 299)))
            (root / cls / "masks" / f"{cls}-{i}.png").write_bytes(
                png_bytes((xray_like(i, 256) > 100).astype(np.uint8) * 255)
            )
    (root / "Normal" / "masks" / "Normal-3.png").write_bytes(b"\x89PNG broken")
    (root / "Normal" / "masks" / "Normal-9.png").write_bytes(png_bytes(xray_like(9, 256)))  # orphan mask
    _write_sheet(
        root / "COVID.metadata.xlsx",
        [
            ("COVID-1", "https://github.com/ieee8023/covid-chestxray-dataset"),
            ("COVID-2", "https://sirm.org/category/senza-categoria/covid-19/"),
        ],
    )
    _write_sheet(
        root / "Normal.metadata.xlsx",
        [(f"NORMAL-{i}", "https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/data") for i in range(1, 4)],
    )
    archive = zip_folder(tmp_path / "build", tmp_path / "v5.zip", top="archive")

    with pytest.raises(DataError, match=r"Normal/masks/Normal-3.png"):
        ingest(archive, tmp_path / "dest", ["COVID", "Normal"])
    report = ingest(archive, tmp_path / "dest", ["COVID", "Normal"], policy="skip")
    dest = tmp_path / "dest"
    assert report.layout == "v5"
    assert report.counts == {"COVID": 3, "Normal": 3}
    assert report.masks == {"COVID": 3, "Normal": 2}
    assert [b.path for b in report.bad] == ["Normal/masks/Normal-3.png"]
    assert report.sources["COVID"] == {
        "github.com/ieee8023/covid-chestxray-dataset": 1,
        "sirm.org/category": 1,
        "unknown": 1,
    }
    assert report.sources["Normal"] == {"kaggle.com/c/rsna-pneumonia-detection-challenge": 3}
    assert (dest / "COVID.metadata.xlsx").is_file() and (dest / "Normal.metadata.xlsx").is_file()
    assert sorted(p.name for p in (dest / "Normal" / "masks").iterdir()) == ["Normal-1.png", "Normal-2.png"]
    assert sha256_file(dest / "COVID" / "masks" / "COVID-2.png") == sha256_file(
        root / "COVID" / "masks" / "COVID-2.png"
    )
    rec = {r.path: r for r in report.records}
    assert rec["COVID/images/COVID-1.png"].mask == "COVID/masks/COVID-1.png"
    assert rec["Normal/images/Normal-3.png"].mask is None
