"""Exact and near-duplicate detection for chest X-rays (sha256 + difference hash)."""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

#: Side of the dHash grid: 16 gives a 256-bit hash (16 rows x 16 horizontal differences).
DEFAULT_HASH_SIZE = 16
#: Near-duplicate threshold in bits of the 256-bit dHash (Hamming distance <= this groups), ~4% of the bits.
#: Measured on the 451-image real sample (tests/data/test_dedup.py): a 0.75x resize + JPEG q90 moves the
#: hash by at most 6 bits (0.5x + q75: 99.3% within 10), while distinct X-rays are >= 15 bits apart (the
#: one pair at 8 bits is a genuine near-duplicate the sample's own de-duplication missed). A 64-bit dHash
#: does not separate chest X-rays: at 6 bits, 2.9% of distinct sample pairs collide.
DEFAULT_THRESHOLD = 10

_BLOCK_ROWS = 256


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


def _hash_words(phashes: Sequence[int]) -> np.ndarray:
    """Pack non-negative integer hashes into an (n, words) uint64 array."""
    values = [int(h) for h in phashes]
    if any(v < 0 for v in values):
        raise ValueError("hashes must be non-negative integers")
    nbits = max((v.bit_length() for v in values), default=0)
    nwords = max(1, -(-nbits // 64))
    if nwords == 1:
        return np.array(values, dtype=np.uint64).reshape(-1, 1)
    raw = b"".join(v.to_bytes(8 * nwords, "big") for v in values)
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(-1, nwords)


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    """Per-element popcount of a uint64 array."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return _POPCOUNT8[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.uint8)


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


def near_pairs(phashes: Sequence[int], threshold: int) -> list[tuple[int, int]]:
    """All index pairs (i < j) whose hashes differ in at most threshold bits (blocked numpy brute force)."""
    n = len(phashes)
    if n < 2 or threshold < 0:
        return []
    words = _hash_words(phashes)
    first = np.ascontiguousarray(words[:, 0])
    pairs: list[tuple[int, int]] = []
    for start in range(0, n, _BLOCK_ROWS):
        stop = min(start + _BLOCK_ROWS, n)
        # the first 64-bit word alone already exceeds the threshold for most pairs: filter on it
        dist = _popcount(first[start:stop, None] ^ first[None, start:])
        ii, jj = np.nonzero(dist <= threshold)
        keep = jj > ii  # both offsets are `start`, so this is j > i globally
        ii, jj = ii[keep] + start, jj[keep] + start
        if words.shape[1] > 1 and ii.size:
            total = dist[ii - start, jj - start].astype(np.uint16)
            for w in range(1, words.shape[1]):
                total += _popcount(words[ii, w] ^ words[jj, w])
            close = total <= threshold
            ii, jj = ii[close], jj[close]
        pairs.extend(zip(ii.tolist(), jj.tolist(), strict=True))
    return pairs


def group_duplicates(sha256s: Sequence[str], phashes: Sequence[int], threshold: int = DEFAULT_THRESHOLD) -> list[int]:
    """Group ids: exact duplicates (same sha256) and near duplicates (phash Hamming distance <= threshold) share one.

    Grouping is transitive (union-find); ids are 0..k-1, numbered in order of first appearance, so deterministic.
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
    pairs = near_pairs(phashes, threshold)
    for i, j in pairs:
        uf.union(i, j)
    ids: dict[int, int] = {}
    out = [ids.setdefault(uf.find(i), len(ids)) for i in range(n)]
    logger.debug("group_duplicates: %d items, %d near pairs, %d groups", n, len(pairs), len(ids))
    return out
