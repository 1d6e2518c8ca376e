"""Tests of cxr.data.ingest on the real sample and on planted faults."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.data import kaggle, layout, metadata
from cxr.data.extract import safe_extract
from cxr.data.imagecheck import MAX_PIXELS, inspect_bytes
from cxr.data.ingest import ingest
from cxr.data.kaggle import DownloadError, download_kaggle
from cxr.data.layout import CLASS_ALIASES, DataError, find_dataset_root
from cxr.data.metadata import read_metadata

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
SAMPLE = SHARED / "cxr-sample"
METADATA_XLSX = SHARED / "cxr-metadata-example" / "NORMAL.metadata.xlsx"
CLASSES = ("COVID", "Normal", "Lung_Opacity", "Viral Pneumonia")

needs_sample = pytest.mark.skipif(
    not (SAMPLE / "manifest.csv").is_file(), reason=f"real CXR sample not found at {SAMPLE}"
)


def validate_image(path: Path, expect_mask: bool = False, max_pixels: int = MAX_PIXELS) -> str | None:
    """Fully decode an image file; return the reason it is bad, or None when it is a usable PNG/JPEG."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    return inspect_bytes(data, expect_mask, fingerprint=False, max_pixels=max_pixels).reason


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest() -> dict[str, str]:
    """relpath -> sha256 from the sample's manifest.csv."""
    with open(SAMPLE / "manifest.csv", newline="") as fh:
        return {row["relpath"]: row["sha256"] for row in csv.DictReader(fh)}


def tree(path: Path) -> dict[str, str]:
    """relpath -> sha256 of every file under path."""
    return {p.relative_to(path).as_posix(): sha256_file(p) for p in sorted(path.rglob("*")) if p.is_file()}


def png_bytes(arr: np.ndarray) -> bytes:
    """Encode an array as PNG (uint16 -> I;16, HxWx4 -> RGBA)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def xray_like(seed: int, size: int = 96) -> np.ndarray:
    """A random 8-bit grayscale image (not a real X-ray; used only where the sample is not needed)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size), dtype=np.uint8)


def small_dataset(root: Path, per_class: int = 3) -> Path:
    """Copy the first few sample images of every class into root (v5-like layout)."""
    for cls in CLASSES:
        src = sorted((SAMPLE / cls / "images").iterdir())[:per_class]
        (root / cls / "images").mkdir(parents=True)
        for p in src:
            shutil.copyfile(p, root / cls / "images" / p.name)
    return root


def zip_folder(folder: Path, archive: Path, top: str | None = None) -> Path:
    """Zip a folder (stored), optionally under a top-level folder name."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                rel = p.relative_to(folder).as_posix()
                zf.write(p, f"{top}/{rel}" if top else rel)
    return archive


# ----------------------------------------------------------------------------- names and layout


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


def _truncated_png() -> bytes:
    data = (SAMPLE / "Lung_Opacity" / "images" / "Lung_Opacity-1.png").read_bytes()
    return data[: len(data) // 2]


def _truncated_jpeg() -> bytes:
    src = sorted((SAMPLE / "Viral Pneumonia" / "images").iterdir())[0]
    data = src.read_bytes()
    return data[: len(data) // 2]


FAULTS = {
    "truncated.png": (_truncated_png, "truncated"),
    "truncated.jpeg": (_truncated_jpeg, "truncated"),
    "empty.png": (lambda: b"", "0 bytes"),
    "notes.png": (lambda: b"these are not pixels\n" * 20, "not an image"),
    "deep16.png": (lambda: png_bytes(xray_like(1).astype(np.uint16) * 257), "16"),
    "alpha.png": (
        lambda: png_bytes(np.dstack([np.stack([xray_like(2)] * 3, -1), xray_like(3)])),
        "transparen",
    ),
    "palette.png": (lambda: _encode(Image.fromarray(xray_like(4)).convert("P")), "mode P"),
    "tiny.png": (lambda: png_bytes(xray_like(5, size=32)), "too small"),
}


def _encode(im: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


@needs_sample
@pytest.mark.parametrize("name", sorted(FAULTS))
def test_validate_image_reasons(tmp_path: Path, name: str) -> None:
    make, reason = FAULTS[name]
    path = tmp_path / name
    path.write_bytes(make())
    got = validate_image(path)
    assert got is not None and reason in got


@needs_sample
def test_validate_image_accepts_real_and_opaque(tmp_path: Path) -> None:
    for row in list(manifest())[::25]:
        assert validate_image(SAMPLE / row) is None, row
    opaque = np.dstack([np.stack([xray_like(6)] * 3, -1), np.full((96, 96), 255, np.uint8)])
    (tmp_path / "opaque.png").write_bytes(png_bytes(opaque))
    assert validate_image(tmp_path / "opaque.png") is None
    (tmp_path / "gray.jpg").write_bytes(_encode(Image.fromarray(xray_like(7)), "JPEG", quality=90))
    assert validate_image(tmp_path / "gray.jpg") is None
    (tmp_path / "mask.png").write_bytes(_encode(Image.fromarray(xray_like(8) > 128)))
    assert validate_image(tmp_path / "mask.png", expect_mask=True) is None
    assert "unreadable" in validate_image(tmp_path / "missing.png")


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
def test_image_above_max_pixels_refused_from_its_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    from PIL import ImageFile

    data = small_dataset(tmp_path / "src", 2)
    big = data / "Normal" / "images" / "Normal-big.png"
    Image.new("L", (10_000, 10_000)).save(big)  # 100 Mpx: above Pillow's own warning limit, 100 kB on disk

    def no_decode(self):
        raise AssertionError(f"decoded {self.size}")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # Pillow's check must not run first
        assert "download.max_pixels" in validate_image(big)
        monkeypatch.undo()
        with pytest.raises(DataError, match=r"Normal/images/Normal-big.png: too large \(10000x10000 .*max_pixels"):
            ingest(data, tmp_path / "dest", CLASSES, policy="fail")
        assert not (tmp_path / "dest").exists()
        report = ingest(data, tmp_path / "dest", CLASSES, policy="skip")
    assert [b.path for b in report.bad] == ["Normal/images/Normal-big.png"]
    assert report.counts["Normal"] == 2
    assert validate_image(big, max_pixels=10_000 * 10_000) is None
    jpeg = next((data / "Viral Pneumonia" / "images").glob("*.jpeg"))  # the limit reads JPEG headers too
    assert "224x224 = 50,176 pixels, above download.max_pixels = 40,000" in validate_image(jpeg, max_pixels=200 * 200)


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


# ----------------------------------------------------------------------------- zip safety


def _evil_zip(path: Path, kind: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data/COVID/images/ok.txt", "fine")
        if kind == "dotdot":
            zf.writestr(zipfile.ZipInfo("data/../../evil.txt"), "pwned")
        elif kind == "absolute":
            zf.writestr(zipfile.ZipInfo(str(path.parent / "abs-evil.txt")), "pwned")
        elif kind == "symlink":
            info = zipfile.ZipInfo("data/link")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "../../evil.txt")
            zf.writestr("data/link/evil.txt", "through the link")
    return path


@pytest.mark.parametrize("kind,reason", [("dotdot", "'..'"), ("absolute", "absolute"), ("symlink", "symbolic link")])
def test_evil_zip_refused(tmp_path: Path, kind: str, reason: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = _evil_zip(work / "evil.zip", kind)
    listing = lambda: sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))  # noqa: E731
    before = listing()
    with pytest.raises(DataError, match=reason) as err:
        safe_extract(archive, work / "out")
    assert "evil" in str(err.value) or "link" in str(err.value)
    assert listing() == before
    with pytest.raises(DataError, match=reason):
        ingest(archive, work / "dest", CLASSES)
    assert listing() == before


def test_zip_limits(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * (4 << 20))
    with pytest.raises(DataError, match=r"zeros.bin.*ratio"):
        safe_extract(bomb, tmp_path / "out")
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(5):
            zf.writestr(f"f{i}.txt", "x" * 100)
    with pytest.raises(DataError, match="members"):
        safe_extract(many, tmp_path / "out", max_members=4)
    with pytest.raises(DataError, match="f[0-9].txt.*size"):
        safe_extract(many, tmp_path / "out", max_total_bytes=250)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.zip", "many.zip"]
    out = safe_extract(many, tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == [f"f{i}.txt" for i in range(5)]
    (tmp_path / "notzip.zip").write_text("nope")
    with pytest.raises(DataError, match="notzip.zip"):
        safe_extract(tmp_path / "notzip.zip", tmp_path / "out2")


# ----------------------------------------------------------------------------- metadata and download


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


def _no_credentials(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.setenv("HOME", str(home))
    for key in list(os.environ):
        if key.startswith("KAGGLE") or key == "XDG_CONFIG_HOME":
            monkeypatch.delenv(key, raising=False)
    (home / "empty").mkdir(parents=True)
    # kagglehub resolves ~/.kaggle at import time; point its lookup at an empty folder too
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / "empty"))


def test_download_without_credentials_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_credentials(monkeypatch, tmp_path / "home")
    with pytest.raises(DownloadError, match=r"(?s)KAGGLE_USERNAME.*local"):
        download_kaggle("tawsifurrahman/covid19-radiography-database", 5, tmp_path / "cache", timeout_s=3)
    assert "KAGGLEHUB_CACHE" not in os.environ or os.environ["KAGGLEHUB_CACHE"] != str(tmp_path / "cache")


def test_download_offline_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_credentials(monkeypatch, tmp_path / "home")
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0" * 32)
    monkeypatch.setattr(kaggle, "KAGGLE_HOST", "kaggle.invalid")
    for key in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(DownloadError, match="cannot reach"):
        download_kaggle("tawsifurrahman/covid19-radiography-database", None, tmp_path / "cache", timeout_s=2)


def test_download_reuses_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_credentials(monkeypatch, tmp_path / "home")
    base = tmp_path / "cache" / "datasets" / "tawsifurrahman" / "covid19-radiography-database"
    done = base / "versions" / "5"
    (done / "COVID-19_Radiography_Dataset").mkdir(parents=True)
    (base / "versions" / "6").mkdir()  # an interrupted download: no completion marker
    with pytest.raises(DownloadError):
        download_kaggle("tawsifurrahman/covid19-radiography-database", 6, tmp_path / "cache", timeout_s=1)
    (base / "5.complete").touch()  # kagglehub's completion marker
    got = download_kaggle("tawsifurrahman/covid19-radiography-database", 5, tmp_path / "cache")
    assert got == done.resolve()
    got = download_kaggle("tawsifurrahman/covid19-radiography-database", None, tmp_path / "cache", timeout_s=1)
    assert got == done.resolve()
