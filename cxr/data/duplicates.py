"""Exact and near-duplicate detection for chest X-rays (sha256 + difference hash)."""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

from cxr.data.hamming import brute_pairs, hash_words, indexed_pairs, use_index

logger = logging.getLogger(__name__)

#: Side of the dHash grid: 16 gives a 256-bit hash (16 rows x 16 horizontal differences).
DEFAULT_HASH_SIZE = 16
#: Near-duplicate threshold in bits of the 256-bit dHash (Hamming distance <= this groups), ~4% of the bits.
#: Measured on the 451-image real sample (tests/data/test_dedup.py): a 0.75x resize + JPEG q90 moves the
#: hash by at most 6 bits (0.5x + q75: 99.3% within 10), while distinct X-rays are >= 15 bits apart (the
#: one pair at 8 bits is a genuine near-duplicate the sample's own de-duplication missed). A 64-bit dHash
#: does not separate chest X-rays: at 6 bits, 2.9% of distinct sample pairs collide.
DEFAULT_THRESHOLD = 10


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def dhash(gray: np.ndarray, hash_size: int = 8) -> int:
    """Difference hash of a 2-D uint8 image (resize to (hash_size+1, hash_size) with cv2.INTER_AREA)."""
    if gray.ndim != 2:
        raise ValueError(f"dhash needs a 2-D grayscale image, got shape {gray.shape}")
    if gray.dtype != np.uint8:
        raise ValueError(f"dhash needs a uint8 image, got dtype {gray.dtype}")
    if hash_size < 2:
        raise ValueError(f"hash_size must be >= 2, got {hash_size}")
    small = cv2.resize(gray, (hash_size + 1, hash_size), interpolation=cv2.INTER_AREA)
    bits = small[:, 1:] > small[:, :-1]
    return int.from_bytes(np.packbits(bits.ravel()).tobytes(), "big") >> ((-bits.size) % 8)


def pil_dhash(image: Image.Image, hash_size: int = DEFAULT_HASH_SIZE) -> int:
    """Difference hash of a decoded PIL image (converted to 8-bit grayscale first)."""
    gray = image if image.mode == "L" else image.convert("L")
    return dhash(np.asarray(gray), hash_size)


def fingerprint_bytes(data: bytes, hash_size: int = DEFAULT_HASH_SIZE) -> tuple[str, int, tuple[int, int], str]:
    """(sha256, dhash, (width, height), mode) of an encoded image held in memory."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return sha256_bytes(data), pil_dhash(im, hash_size), (im.width, im.height), im.mode


class _UnionFind:
    """Minimal union-find with path halving."""

    def __init__(self, n: int) -> None:
        """Start with n singleton sets."""
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        """Root of i's set."""
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        """Merge the sets of a and b (smaller root wins, for determinism)."""
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb


def near_pairs(phashes: Sequence[int], threshold: int, method: str = "auto") -> list[tuple[int, int]]:
    """All index pairs (i < j) whose hashes differ in at most threshold bits, sorted.

    method "index" searches a multi-index hash (n log n plus the candidates; see cxr.data.hamming), "brute"
    compares every pair, "auto" takes the index unless the hashes are too short for this threshold. Both
    return exactly the same pairs.
    """
    if method not in ("auto", "index", "brute"):
        raise ValueError(f"near_pairs method must be auto, index or brute, got {method!r}")
    n = len(phashes)
    if n < 2 or threshold < 0:
        return []
    words, nbits = hash_words(phashes)
    if method == "index" or (method == "auto" and use_index(nbits, threshold)):
        ii, jj = indexed_pairs(words, nbits, threshold)
    else:
        ii, jj = brute_pairs(words, threshold)
    return list(zip(ii.tolist(), jj.tolist(), strict=True))


def group_duplicates(
    sha256s: Sequence[str], phashes: Sequence[int], threshold: int = DEFAULT_THRESHOLD, method: str = "auto"
) -> list[int]:
    """Group ids: exact duplicates (same sha256) and near duplicates (phash Hamming distance <= threshold) share one.

    Grouping is transitive (union-find); ids are 0..k-1, numbered in order of first appearance, so deterministic.
    method picks the pair search (see near_pairs); every method gives the same groups.
    """
    n = len(sha256s)
    if len(phashes) != n:
        raise ValueError(f"sha256s and phashes differ in length ({n} vs {len(phashes)})")
    uf = _UnionFind(n)
    first: dict[str, int] = {}
    for i, digest in enumerate(sha256s):
        j = first.setdefault(digest, i)
        if j != i:
            uf.union(j, i)
    pairs = near_pairs(phashes, threshold, method)
    for i, j in pairs:
        uf.union(i, j)
    ids: dict[int, int] = {}
    out = [ids.setdefault(uf.find(i), len(ids)) for i in range(n)]
    logger.debug("group_duplicates: %d items, %d near pairs, %d groups", n, len(pairs), len(ids))
    return out
