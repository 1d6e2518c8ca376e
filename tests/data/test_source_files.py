"""A local source's files that ingestion cannot take as they are: an image in a folder it does not read, a link
out of the source, a blank image, a file name that is not UTF-8. Each is named with its reason: under policy
'fail' in the error (and nothing is written), under 'skip' in the report, ``skipped.json`` and the data report."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_project, tiny_params
from ingest_support import CLASSES, SAMPLE, needs_sample, png_bytes, small_dataset, xray_like

from cxr.data.ingest import ingest
from cxr.data.layout import DataError

pytestmark = needs_sample

# A file name with a byte that is not UTF-8 (Latin-1 'é'), and how reports show it.
NOT_UTF8 = b"caf\xe9.png"
NOT_UTF8_SHOWN = "caf\\xe9.png"


def a_sample_image(n: int = 9) -> Path:
    return sorted((SAMPLE / "COVID" / "images").iterdir())[n]


def bad_reasons(source: Path, dest: Path) -> dict[str, str]:
    """Ingest under 'skip' and return the refused files (path -> reason); the same under 'fail' must raise."""
    with pytest.raises(DataError) as err:
        ingest(source, dest, CLASSES, policy="fail")
    assert not dest.exists()
    report = ingest(source, dest, CLASSES, policy="skip")
    bad = {b.path: b.reason for b in report.bad}
    for path in bad:
        assert path in str(err.value)
    json.dumps(report.to_dict(include_records=True), ensure_ascii=False).encode("utf-8")  # storable as it is
    return bad


def not_utf8_name_works(folder: Path) -> bool:
    try:
        (Path(os.fsdecode(os.fsencode(folder) + b"/" + NOT_UTF8))).write_bytes(b"")
    except (OSError, UnicodeError):
        return False
    os.remove(os.fsencode(folder) + b"/" + NOT_UTF8)
    return True


def test_images_in_folders_that_are_not_read_are_named(tmp_path: Path) -> None:
    src = small_dataset(tmp_path / "src")
    (src / "COVID" / "images" / "2021" / "more").mkdir(parents=True)
    shutil.copyfile(a_sample_image(), src / "COVID" / "images" / "2021" / "more" / "COVID-x.png")
    shutil.copyfile(a_sample_image(10), src / "COVID" / "loose.png")  # beside images/ in a v5 class folder
    (src / "Normal" / "masks" / "old").mkdir(parents=True)
    shutil.copyfile(a_sample_image(11), src / "Normal" / "masks" / "old" / "Normal-1.png")
    (src / "COVID" / "images" / "notes").mkdir()
    (src / "COVID" / "images" / "notes" / "README.txt").write_text("not an image, not listed")

    bad = bad_reasons(src, tmp_path / "dest")
    assert set(bad) == {"COVID/images/2021/more/COVID-x.png", "COVID/loose.png", "Normal/masks/old/Normal-1.png"}
    assert "images are read only directly in COVID/images/" in bad["COVID/images/2021/more/COVID-x.png"]
    assert "in COVID/, which is not read" in bad["COVID/loose.png"]
    assert "masks are read only directly in Normal/masks/" in bad["Normal/masks/old/Normal-1.png"]


def test_images_in_a_subfolder_of_a_flat_class_folder_are_named(tmp_path: Path) -> None:
    root = tmp_path / "src"
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        shutil.copyfile(a_sample_image(), root / cls / f"{cls}-1.png")
    (root / "Normal" / "batch2").mkdir()
    shutil.copyfile(a_sample_image(3), root / "Normal" / "batch2" / "Normal-2.png")
    bad = bad_reasons(root, tmp_path / "dest")
    assert set(bad) == {"Normal/batch2/Normal-2.png"}
    assert "images are read only directly in Normal/" in bad["Normal/batch2/Normal-2.png"]


def test_links_out_of_the_source_are_refused_and_links_inside_it_are_not(tmp_path: Path) -> None:
    src = small_dataset(tmp_path / "src")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "folder").mkdir(parents=True)
    shutil.copyfile(a_sample_image(), elsewhere / "secret.png")
    shutil.copyfile(a_sample_image(4), elsewhere / "folder" / "x.png")
    (src / "COVID" / "images" / "COVID-out.png").symlink_to(elsewhere / "secret.png")
    (src / "COVID" / "images" / "linked").symlink_to(elsewhere / "folder", target_is_directory=True)
    first = sorted((src / "Normal" / "images").iterdir())[0]
    (src / "Normal" / "images" / "Normal-again.png").symlink_to(first)  # inside the source: an ordinary file

    bad = bad_reasons(src, tmp_path / "dest")
    assert set(bad) == {"COVID/images/COVID-out.png", "COVID/images/linked"}
    assert bad["COVID/images/COVID-out.png"] == (
        f"symbolic link to {elsewhere / 'secret.png'}, outside the source {src.resolve()}"
    )
    assert "outside the source" in bad["COVID/images/linked"]
    assert (tmp_path / "dest" / "Normal" / "images" / "Normal-again.png").read_bytes() == first.read_bytes()


def test_a_folder_linked_inside_the_source_is_looked_into_once(tmp_path: Path) -> None:
    src = small_dataset(tmp_path / "src")
    (src / "extra").mkdir()
    shutil.copyfile(a_sample_image(), src / "extra" / "COVID-x.png")
    (src / "COVID" / "images" / "more").symlink_to(src / "extra", target_is_directory=True)
    (src / "COVID" / "images" / "loop").symlink_to(src / "COVID", target_is_directory=True)  # a cycle
    bad = bad_reasons(src, tmp_path / "dest")
    assert set(bad) == {"COVID/images/more/COVID-x.png"}
    assert "images are read only directly in COVID/images/" in bad["COVID/images/more/COVID-x.png"]


def test_a_class_folder_linked_from_outside_is_refused(tmp_path: Path) -> None:
    src = small_dataset(tmp_path / "src")
    shutil.move(src / "Normal", tmp_path / "Normal-elsewhere")
    (src / "Normal").symlink_to(tmp_path / "Normal-elsewhere", target_is_directory=True)
    with pytest.raises(DataError, match=r"Normal/images/.*reached through a symbolic link.*outside the source"):
        ingest(src, tmp_path / "dest", CLASSES, policy="fail")
    with pytest.raises(DataError, match=r"class 'Normal': no valid images"):
        ingest(src, tmp_path / "dest", CLASSES, policy="skip")
    assert not (tmp_path / "dest").exists()


def test_blank_images_are_bad_files(tmp_path: Path) -> None:
    src = small_dataset(tmp_path / "src")
    (src / "COVID" / "images" / "black.png").write_bytes(png_bytes(np.zeros((96, 96), np.uint8)))
    (src / "Normal" / "images" / "grey.png").write_bytes(png_bytes(np.full((96, 96, 3), (10, 20, 30), np.uint8)))
    (src / "Normal" / "images" / "one-dot.png").write_bytes(png_bytes(np.pad(np.full((1, 1), 255, np.uint8), 48)))
    bad = bad_reasons(src, tmp_path / "dest")
    assert bad == {
        "COVID/images/black.png": "blank image: every pixel is 0",
        "Normal/images/grey.png": "blank image: every pixel is (10, 20, 30)",
    }


@pytest.mark.parametrize("where", ["images", "masks"])
def test_a_name_that_is_not_utf8_is_named_and_obeys_the_policy(tmp_path: Path, where: str) -> None:
    src = small_dataset(tmp_path / "src")
    folder = src / "COVID" / where
    folder.mkdir(exist_ok=True)
    if not not_utf8_name_works(folder):
        pytest.skip("this file system does not take names that are not UTF-8")
    with open(os.fsencode(folder) + b"/" + NOT_UTF8, "wb") as fh:
        fh.write(png_bytes(xray_like(7, 96)))
    bad = bad_reasons(src, tmp_path / "dest")
    assert list(bad) == [f"COVID/{where}/{NOT_UTF8_SHOWN}"]
    assert "not valid UTF-8" in bad[f"COVID/{where}/{NOT_UTF8_SHOWN}"]


def test_what_is_left_out_reaches_skipped_json_and_the_data_report(tmp_path: Path) -> None:
    """Through the download and split steps: every kind, with its reason, where a user reads about the data."""
    from cxr.core.config import load_settings
    from cxr.data.download import download
    from cxr.data.split import split
    from cxr.data.synthetic import generate

    src = tmp_path / "source"
    generate(src, {c: 20 for c in CLASSES}, size=96, seed=0)
    (src / "COVID" / "images" / "extra").mkdir()
    shutil.copyfile(src / "COVID" / "images" / "COVID-1.png", src / "COVID" / "images" / "extra" / "COVID-x.png")
    (src / "Normal" / "images" / "Normal-black.png").write_bytes(png_bytes(np.zeros((96, 96), np.uint8)))
    (tmp_path / "outside.png").write_bytes((src / "Normal" / "images" / "Normal-1.png").read_bytes())
    (src / "Normal" / "images" / "Normal-out.png").symlink_to(tmp_path / "outside.png")
    expected = {"COVID/images/extra/COVID-x.png", "Normal/images/Normal-black.png", "Normal/images/Normal-out.png"}
    if not_utf8_name_works(src):
        shutil.copyfile(
            src / "COVID" / "images" / "COVID-2.png", os.fsencode(src / "COVID" / "images") + b"/" + NOT_UTF8
        )
        expected.add(f"COVID/images/{NOT_UTF8_SHOWN}")

    def run(policy: str):
        change = {"source": "local", "policy": policy, "local": {"path": str(src)}}
        root = make_project(tmp_path / policy, tiny_params(download=change))
        s = load_settings(root / "params.yaml")
        return root, s, s.paths(root)

    root, s, paths = run("fail")
    with pytest.raises(DataError) as err:
        download(s.base, s.download, paths)
    assert all(p in str(err.value) for p in expected)
    assert not paths.raw.exists() and not (root / "data.dvc").exists()  # nothing half-written

    root, s, paths = run("skip")
    download(s.base, s.download, paths)
    split(s.base, s.split, paths)
    stored = json.loads((paths.raw / "skipped.json").read_text(encoding="utf-8"))["skipped"]
    report = json.loads(paths.data_report.read_text(encoding="utf-8"))["skipped"]
    assert {r["path"] for r in stored} == {r["path"] for r in report} == expected
    assert all(r["reason"] for r in report)
