"""Safe extraction: archives that would write outside their folder, or unpack to too much, are refused untouched."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest
from ingest_support import CLASSES

from cxr.data.extract import safe_extract
from cxr.data.ingest import ingest
from cxr.data.layout import DataError


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
