"""The split: stratified or balanced, seeded, duplicate groups kept on one side, byte-identical output."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxr.core.paths import Paths
from cxr.core.sections import Base, Split
from cxr.data.split import assign_splits, split


def _labels() -> list[str]:
    return ["a"] * 300 + ["b"] * 100 + ["c"] * 50


def test_stratified_sizes_keep_class_proportions() -> None:
    labels = _labels()
    out = assign_splits(labels, list(range(len(labels))), Split(valid=90, test=45), seed=1)
    counts = Counter(zip(labels, out, strict=True))
    assert sum(v for (_label, s), v in counts.items() if s == "valid") == 90
    assert sum(v for (_label, s), v in counts.items() if s == "test") == 45
    assert (counts[("a", "valid")], counts[("b", "valid")], counts[("c", "valid")]) == (60, 20, 10)
    assert (counts[("a", "test")], counts[("b", "test")], counts[("c", "test")]) == (30, 10, 5)


def test_balanced_mode_takes_equal_shares() -> None:
    labels = _labels()
    out = assign_splits(labels, list(range(len(labels))), Split(mode="balanced", valid=30, test=30), seed=1)
    counts = Counter(zip(labels, out, strict=True))
    assert {counts[(c, "valid")] for c in "abc"} == {10}
    assert {counts[(c, "test")] for c in "abc"} == {10}


def test_seed_decides_and_groups_never_straddle() -> None:
    labels = _labels()
    groups = [i // 3 for i in range(len(labels))]  # triples of near-copies
    a = assign_splits(labels, groups, Split(valid=60, test=60), seed=7)
    b = assign_splits(labels, groups, Split(valid=60, test=60), seed=7)
    c = assign_splits(labels, groups, Split(valid=60, test=60), seed=8)
    assert a == b and a != c
    for g in set(groups):
        assert len({a[i] for i, gg in enumerate(groups) if gg == g}) == 1


def _raw(root: Path, n: int = 12) -> None:
    rng = np.random.default_rng(0)
    for cls in ("COVID", "Normal"):
        d = root / cls / "images"
        d.mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(d / f"{cls}-{i + 1}.png"), rng.integers(0, 255, (80, 80), dtype=np.uint8))
    # An exact copy across sides must land on one side with its original.
    (root / "COVID" / "images" / "COVID-99.png").write_bytes((root / "COVID" / "images" / "COVID-1.png").read_bytes())


def test_make_split_writes_identical_manifests_and_keeps_copies_together(tmp_path: Path) -> None:
    base = Base(classes=["COVID", "Normal"], seed=3)
    manifests = []
    for run in ("one", "two"):
        root = tmp_path / run
        _raw(root / "data" / "raw")
        paths = Paths().resolve(root)
        res = split(base, Split(valid=4, test=4), paths)
        manifests.append(paths.manifest.read_bytes())
        assert res.duplicate_groups == 1
    assert manifests[0] == manifests[1]
    rows = [line.split(",") for line in manifests[0].decode().splitlines()[1:]]
    by_path = {r[0]: r for r in rows}
    assert by_path["COVID/images/COVID-1.png"][3] == by_path["COVID/images/COVID-99.png"][3]
    assert by_path["COVID/images/COVID-1.png"][5] == by_path["COVID/images/COVID-99.png"][5]


def test_missing_class_folder_and_bad_image_are_named(tmp_path: Path) -> None:
    root = tmp_path
    _raw(root / "data" / "raw")
    paths = Paths().resolve(root)
    with pytest.raises(FileNotFoundError, match="Lung_Opacity"):
        split(Base(classes=["COVID", "Lung_Opacity"]), Split(valid=2, test=2), paths)
    (root / "data" / "raw" / "Normal" / "images" / "Normal-3.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="Normal-3.png"):
        split(Base(classes=["COVID", "Normal"]), Split(valid=2, test=2), paths)
    assert not paths.manifest.exists()


def test_index_from_ingestion_gives_the_same_split_without_decoding(tmp_path: Path, monkeypatch) -> None:
    """The download step's index (hashes, sizes, modes, sources) stands in for decoding every image again."""
    import cxr.data.duplicates
    from cxr.data.rawindex import build_index, index_path, read_index, write_index

    base = Base(classes=["COVID", "Normal"], seed=3)
    root = tmp_path / "p"
    raw = root / "data" / "raw"
    _raw(raw)
    paths = Paths().resolve(root)
    split(base, Split(valid=4, test=4), paths)
    without = paths.manifest.read_bytes()
    report = paths.data_report.read_bytes()

    write_index(index_path(raw), build_index(raw, base.folders))
    index = read_index(raw)
    assert len(index) == 25 and index["COVID/images/COVID-99.png"].sha256 == index["COVID/images/COVID-1.png"].sha256
    assert index["Normal/images/Normal-3.png"].fingerprint[2:] == ((80, 80), "L")

    def no_decoding(*args, **kwargs):
        raise AssertionError("the split decoded an image although the index covers it")

    monkeypatch.setattr(cxr.data.duplicates, "fingerprint_bytes", no_decoding)
    split(base, Split(valid=4, test=4), paths)
    assert paths.manifest.read_bytes() == without and paths.data_report.read_bytes() == report

    # An image the index does not know: the split hashes everything itself rather than trust a stale index.
    (raw / "Normal" / "images" / "Normal-50.png").write_bytes((raw / "Normal" / "images" / "Normal-1.png").read_bytes())
    with pytest.raises(ValueError, match="decoded an image"):
        split(base, Split(valid=4, test=4), paths)


def test_a_malformed_index_is_an_error_naming_it(tmp_path: Path) -> None:
    from cxr.data.rawindex import read_index

    (tmp_path / "index.csv").write_text("path,sha\nx,y\n")
    with pytest.raises(ValueError, match="index.csv: not a raw data index"):
        read_index(tmp_path)
