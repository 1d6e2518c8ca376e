"""Tests of cxr.data.duplicates: hashes, near-duplicate robustness on real X-rays, grouping speed."""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from cxr.data.duplicates import (
    DEFAULT_HASH_SIZE,
    DEFAULT_THRESHOLD,
    dhash,
    fingerprint_bytes,
    group_duplicates,
    near_pairs,
    sha256_bytes,
)
from cxr.data.hamming import hash_words, indexed_pairs

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "cxr-sample"
needs_sample = pytest.mark.skipif(
    not (SAMPLE / "manifest.csv").is_file(), reason=f"real CXR sample not found at {SAMPLE}"
)


def image_fingerprint(path: Path) -> tuple[str, int, tuple[int, int], str]:
    """(sha256 of bytes, dhash of the grayscale decode, (width,height), mode) from a single read."""
    data = Path(path).read_bytes()
    try:
        return fingerprint_bytes(data)
    except Exception as exc:  # PIL raises many kinds for bad data
        raise ValueError(f"{path}: cannot decode image ({exc})") from exc


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes."""
    return (a ^ b).bit_count()


def sample_rows() -> list[dict[str, str]]:
    """Rows of the sample's manifest.csv."""
    with open(SAMPLE / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def degrade(data: bytes, scale: float | None = None, size: int | None = None, quality: int = 90) -> bytes:
    """Resize an encoded image (area) and re-encode it as JPEG."""
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("L")
        new = size or round(im.width * scale)
        small = cv2.resize(np.asarray(im), (new, new), interpolation=cv2.INTER_AREA)
    buf = io.BytesIO()
    Image.fromarray(small).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def fingerprint_of(data: bytes, tmp_path: Path, name: str) -> tuple[str, int, tuple[int, int], str]:
    """image_fingerprint of bytes written to a temp file."""
    path = tmp_path / name
    path.write_bytes(data)
    return image_fingerprint(path)


def test_sha256_bytes() -> None:
    assert sha256_bytes(b"") == hashlib.sha256(b"").hexdigest()
    assert sha256_bytes(b"abc").startswith("ba7816bf")


def test_dhash_basics() -> None:
    flat = np.full((50, 60), 128, np.uint8)
    assert dhash(flat) == 0
    ramp = np.tile(np.arange(90, dtype=np.uint8), (40, 1))
    assert dhash(ramp) == 2**64 - 1  # every left-to-right step increases
    assert dhash(ramp, hash_size=DEFAULT_HASH_SIZE) == 2**256 - 1  # the 16x16 grid fingerprints use
    assert dhash(ramp[:, ::-1].copy()) == 0
    assert dhash(ramp, hash_size=5) == 2**25 - 1
    with pytest.raises(ValueError):
        dhash(np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError):
        dhash(np.zeros((10, 10), np.float32))


@needs_sample
def test_image_fingerprint_matches_manifest() -> None:
    for row in sample_rows()[::50]:
        sha, h, size, mode = image_fingerprint(SAMPLE / row["relpath"])
        assert sha == row["sha256"]
        assert size == (int(row["width"]), int(row["height"]))
        assert mode == row["mode"]
        assert 0 <= h < 2**256


def test_image_fingerprint_bad_file(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"nope")
    with pytest.raises(ValueError, match="x.png"):
        image_fingerprint(tmp_path / "x.png")


@needs_sample
def test_resized_jpeg_of_299px_original_groups_with_it(tmp_path: Path) -> None:
    original = (SAMPLE / "Lung_Opacity" / "images" / "Lung_Opacity-1.png").read_bytes()
    sha_a, h_a, size_a, _ = fingerprint_of(original, tmp_path, "orig.png")
    sha_b, h_b, size_b, _ = fingerprint_of(degrade(original, size=224), tmp_path, "small.jpg")
    assert size_a == (299, 299) and size_b == (224, 224) and sha_a != sha_b
    assert hamming(h_a, h_b) <= DEFAULT_THRESHOLD
    other = image_fingerprint(sorted((SAMPLE / "Normal" / "images").iterdir())[0])
    assert group_duplicates([sha_a, sha_b, other[0]], [h_a, h_b, other[1]]) == [0, 0, 1]


@needs_sample
def test_near_duplicate_recall_and_false_groups_on_sample(tmp_path: Path) -> None:
    """Every sample image vs a 0.75x JPEG q90 copy (recall) and distinct images vs each other (false groups)."""
    paths = [SAMPLE / r["relpath"] for r in sample_rows()]
    prints = [image_fingerprint(p) for p in paths]
    shas = [p[0] for p in prints]
    hashes = [p[1] for p in prints]

    copies = [fingerprint_of(degrade(p.read_bytes(), scale=0.75), tmp_path, "c.jpg")[1] for p in paths]
    moved = [hamming(a, b) for a, b in zip(hashes, copies, strict=True)]
    recall = np.mean([d <= DEFAULT_THRESHOLD for d in moved])
    assert recall >= 0.98, f"recall {recall:.3f}, distances {np.bincount(moved)}"

    groups = group_duplicates(shas, hashes)
    sizes = np.bincount(groups)
    falsely_grouped = int(sizes[sizes > 1].sum())
    pairs = len(near_pairs(hashes, DEFAULT_THRESHOLD))
    n = len(paths)
    pair_rate = pairs / (n * (n - 1) / 2)
    # The sample was de-duplicated with a 16x16 average hash (8 bits); the dHash still finds one pair,
    # COVID-1060 / COVID-1117, which is the same radiograph (checked by eye). Everything else is distinct.
    assert falsely_grouped / n <= 0.01, f"{falsely_grouped}/{n} images grouped ({pairs} pairs, rate {pair_rate:.2e})"
    by_name = {p.name: g for p, g in zip(paths, groups, strict=True)}
    assert by_name["COVID-1060.png"] == by_name["COVID-1117.png"]


def _brute_groups(shas: list[str], hashes: list[int], threshold: int) -> list[int]:
    """Reference grouping by explicit transitive closure."""
    n = len(shas)
    adj = {i: set() for i in range(n)}
    for i, j in itertools.combinations(range(n), 2):
        if shas[i] == shas[j] or hamming(hashes[i], hashes[j]) <= threshold:
            adj[i].add(j)
            adj[j].add(i)
    label = [-1] * n
    nxt = 0
    for i in range(n):
        if label[i] < 0:
            stack = [i]
            while stack:
                k = stack.pop()
                if label[k] < 0:
                    label[k] = nxt
                    stack.extend(adj[k])
            nxt += 1
    return label


def test_group_duplicates_small_cases() -> None:
    assert group_duplicates([], [], 4) == []
    # chain 0-1-2 by Hamming 1 steps is transitive; 3 is far; 4 shares 3's sha
    shas = ["a", "b", "c", "d", "d"]
    hashes = [0b0000, 0b0001, 0b0011, 0xFFFF_0000, 0x0000_FFFF_0000_0000]
    assert group_duplicates(shas, hashes, 1) == [0, 0, 0, 1, 1]
    assert group_duplicates(shas, hashes, 0) == [0, 1, 2, 3, 3]
    assert group_duplicates(shas, hashes, -1) == [0, 1, 2, 3, 3]
    assert group_duplicates(["z", "y", "z"], [5, 2**63, 2**62], 0) == [0, 1, 0]
    with pytest.raises(ValueError):
        group_duplicates(["a"], [1, 2], 3)


@pytest.mark.parametrize("bits", [64, 256])
def test_group_duplicates_matches_brute_force(bits: int) -> None:
    rng = np.random.default_rng(bits)
    centres = [int.from_bytes(rng.bytes(bits // 8), "big") for _ in range(40)]
    hashes, shas = [], []
    for _ in range(300):
        h = centres[rng.integers(len(centres))]
        for b in rng.choice(bits, size=rng.integers(0, 8), replace=False):
            h ^= 1 << int(b)
        hashes.append(h)
        shas.append(f"s{rng.integers(280)}")
    for threshold in (0, 3, 6):
        assert group_duplicates(shas, hashes, threshold) == _brute_groups(shas, hashes, threshold)


def test_group_duplicates_at_full_dataset_size() -> None:
    rng = np.random.default_rng(0)
    n = 21_165
    hashes = [int.from_bytes(rng.bytes(32), "big") for _ in range(n)]  # 256-bit, like the default dHash
    for i in range(0, 2000, 2):  # plant 1000 near-duplicate pairs
        hashes[i + 1] = hashes[i] ^ (1 << int(rng.integers(256))) ^ (1 << int(rng.integers(256)))
    shas = [f"{i}" for i in range(n)]
    shas[5000] = shas[7000]  # and one exact duplicate with unrelated hashes
    groups = group_duplicates(shas, hashes, DEFAULT_THRESHOLD)
    assert all(groups[i] == groups[i + 1] for i in range(0, 2000, 2))
    assert groups[5000] == groups[7000]
    assert max(groups) + 1 == n - 1001


def _pairs(found: tuple[np.ndarray, np.ndarray]) -> list[tuple[int, int]]:
    """(i, j) arrays as the list near_pairs returns."""
    return list(zip(found[0].tolist(), found[1].tolist(), strict=True))


def _planted_hashes(bits: int, n: int, seed: int) -> list[int]:
    """n hashes of the given width around a few centres (so many pairs fall near every threshold)."""
    rng = np.random.default_rng(seed)
    centres = [int.from_bytes(rng.bytes(bits // 8), "big") for _ in range(max(2, n // 8))]
    out = []
    for _ in range(n):
        h = centres[rng.integers(len(centres))]
        for b in rng.choice(bits, size=rng.integers(0, 14), replace=False):
            h ^= 1 << int(b)
        out.append(h)
    return out


@pytest.mark.parametrize(("bits", "seed"), [(64, 1), (256, 2), (256, 3), (100, 4)])
def test_indexed_near_pairs_are_the_brute_force_pairs(bits: int, seed: int) -> None:
    hashes = _planted_hashes(bits, 600, seed)
    for threshold in (0, 1, 3, 6, 10, 15):
        brute = near_pairs(hashes, threshold, method="brute")
        assert near_pairs(hashes, threshold, method="index") == brute, (bits, threshold)
        assert near_pairs(hashes, threshold) == brute
        # small leaves send the larger buckets through the recursive search on the other bits
        assert _pairs(indexed_pairs(*hash_words(hashes), threshold, leaf=8)) == brute, (bits, threshold)
    assert len(near_pairs(hashes, 10, method="brute")) > 100  # the sets do reach the threshold


def test_indexed_near_pairs_edge_cases() -> None:
    # hashes of different bit lengths, duplicates, zeros; thresholds up to and past the width
    hashes = [0, 0, 1, 3, 2**70, 2**70 + 1, 2**255, 7, 7, 2**64 - 1]
    words, nbits = hash_words(hashes)
    for threshold in (0, 1, 2, 5, 64, 255, 256, 300):
        brute = near_pairs(hashes, threshold, method="brute")
        assert near_pairs(hashes, threshold, method="index") == brute
        assert _pairs(indexed_pairs(words, nbits, threshold, leaf=3)) == brute, threshold
    assert near_pairs([5, 5], 0, method="index") == [(0, 1)]
    assert near_pairs([5], 3, method="index") == []
    with pytest.raises(ValueError, match="method"):
        near_pairs([1, 2], 1, method="faiss")


DEV = SAMPLE.parent / "cxr-dev"


@pytest.fixture(scope="module", params=[SAMPLE, DEV], ids=["cxr-sample", "cxr-dev"])
def real_prints(request: pytest.FixtureRequest) -> tuple[list[str], list[int]]:
    """(sha256s, dHashes) of every image of a real set in ../shared, as the split computes them."""
    root = request.param
    if not (root / "manifest.csv").is_file():
        pytest.skip(f"real CXR set not found at {root}")
    with open(root / "manifest.csv", newline="") as fh:
        prints = [fingerprint_bytes((root / r["relpath"]).read_bytes()) for r in csv.DictReader(fh)]
    return [p[0] for p in prints], [p[1] for p in prints]


def test_indexed_grouping_is_the_brute_force_grouping_on_real_images(real_prints: tuple[list[str], list[int]]) -> None:
    shas, hashes = real_prints
    for threshold in (0, 4, DEFAULT_THRESHOLD, 16, 24):
        brute = near_pairs(hashes, threshold, method="brute")
        assert near_pairs(hashes, threshold, method="index") == brute, threshold
        assert group_duplicates(shas, hashes, threshold, "index") == group_duplicates(shas, hashes, threshold, "brute")
        assert _pairs(indexed_pairs(*hash_words(hashes), threshold, leaf=8)) == brute, threshold
    assert len(near_pairs(hashes, 24, method="brute")) > 0  # the widest threshold does find pairs
