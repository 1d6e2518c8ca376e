"""data/raw as one stored zip per class folder: deterministic packing, the same reads packed or loose."""

from __future__ import annotations

import os
import pickle
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.core.paths import Paths
from cxr.core.sections import Base, Split
from cxr.data.rawstore import RawStore, archive_path, pack
from cxr.data.split import split
from cxr.model.cache import load_raw


def _loose(root: Path) -> Path:
    """A small canonical layout: two class folders with images (and masks for one) and a top-level file."""
    rng = np.random.default_rng(0)
    for cls, n in (("COVID", 6), ("Normal", 6)):
        for sub in ("images", "masks") if cls == "COVID" else ("images",):
            d = root / cls / sub
            d.mkdir(parents=True)
            for i in range(1, n + 1):
                arr = rng.integers(0, 256, (32, 32), dtype=np.uint8)
                Image.fromarray(arr, "L").save(d / f"{cls}-{i}.png")
    (root / "NOTES.txt").write_text("top-level files are copied as they are\n")
    return root


def test_pack_is_deterministic_stored_and_canonical(tmp_path: Path) -> None:
    loose = _loose(tmp_path / "loose")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    written = pack(loose, a)
    assert [p.name for p in written] == ["COVID.zip", "Normal.zip"]
    time.sleep(1.1)  # a second later, with other mtimes: the same bytes
    os.utime(loose / "COVID" / "images" / "COVID-1.png", (0, 0))
    pack(loose, b)
    for name in ("COVID.zip", "Normal.zip", "NOTES.txt"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    with zipfile.ZipFile(a / "COVID.zip") as zf:
        infos = zf.infolist()
        assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}  # the original bytes, not re-encoded
        assert [i.filename for i in infos] == sorted(i.filename for i in infos)
        assert "COVID/images/COVID-3.png" in zf.namelist() and "COVID/masks/COVID-3.png" in zf.namelist()
        assert zf.read("COVID/images/COVID-3.png") == (loose / "COVID" / "images" / "COVID-3.png").read_bytes()
    assert not list(a.glob(".*.tmp"))


def test_packed_and_loose_read_the_same(tmp_path: Path) -> None:
    loose = _loose(tmp_path / "loose")
    packed = tmp_path / "packed"
    packed.mkdir()
    pack(loose, packed)
    with RawStore(loose) as lo, RawStore(packed) as pk:
        assert pk.is_packed("COVID") and not lo.is_packed("COVID")
        for sub in ("images", "masks"):
            assert lo.list("COVID", sub) == pk.list("COVID", sub)
        assert pk.list("Normal", "masks") == [] and lo.list("Normal", "masks") == []
        assert pk.list("COVID", "images", (".jpg",)) == []
        rel = "COVID/images/COVID-2.png"
        assert lo.read(rel) == pk.read(rel) and pk.exists(rel) and not pk.exists("COVID/images/nope.png")
        assert isinstance(pk.model_input(rel), bytes) and lo.model_input(rel) == str(loose / rel)
        assert np.array_equal(load_raw(lo, rel, 16), load_raw(pk, rel, 16))
        assert not pk.has_folder("Lung_Opacity")
        clone = pickle.loads(pickle.dumps(pk))  # what a DataLoader worker receives
        assert clone.read(rel) == pk.read(rel)


def test_split_manifest_is_the_same_packed_or_loose(tmp_path: Path) -> None:
    manifests = []
    for form in ("loose", "packed"):
        root = tmp_path / form
        raw = root / "data" / "raw"
        if form == "loose":
            _loose(raw)
        else:
            raw.mkdir(parents=True)
            pack(_loose(tmp_path / "src"), raw)
        paths = Paths().resolve(root)
        split(Base(classes=["COVID", "Normal"]), Split(valid=2, test=2), paths)
        manifests.append(paths.manifest.read_bytes())
    assert manifests[0] == manifests[1]


def test_missing_member_and_broken_archive_are_named(tmp_path: Path) -> None:
    packed = tmp_path / "raw"
    packed.mkdir()
    pack(_loose(tmp_path / "loose"), packed)
    with RawStore(packed) as store:
        with pytest.raises(FileNotFoundError, match=r"COVID\.zip:COVID/images/COVID-99\.png"):
            store.read("COVID/images/COVID-99.png")
        with pytest.raises(ValueError, match="not a path inside a class folder"):
            store.read("../etc/passwd")
    zpath = archive_path(packed, "Normal")
    zpath.write_bytes(zpath.read_bytes()[:100])  # truncated
    with RawStore(packed) as store, pytest.raises(ValueError, match=r"Normal\.zip.*not a readable zip.*dvc checkout"):
        store.list("Normal", "images")
    # The loose fallback names the file it could not read.
    shutil.rmtree(tmp_path / "loose" / "Normal")
    with RawStore(tmp_path / "loose") as store, pytest.raises(FileNotFoundError, match="Normal-1.png"):
        store.read("Normal/images/Normal-1.png")
