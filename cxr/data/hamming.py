"""Hamming-radius pair search over packed binary hashes: a blocked brute force and a multi-index hash.

The multi-index hash is the pigeonhole argument of Norouzi, Punjani and Fleet ("Fast search in Hamming space
with multi-index hashing", CVPR 2012): cut the hash into ``threshold + 1`` disjoint bit ranges; two hashes
that differ in at most ``threshold`` bits agree exactly on at least one range. Grouping the hashes by each
range (a sort) gives every candidate pair; each candidate is then checked on the full hash, so the result is
exactly the brute force's, in the same order, while the work grows with n log n plus the number of
candidates instead of n squared.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_BLOCK_ROWS = 256
#: Below this many bits per range a random pair collides in some range too often for the index to pay.
MIN_RANGE_BITS = 12
#: Candidates checked on the full hash per batch (bounds the verification's memory).
_VERIFY_BATCH = 1 << 22
#: Buckets up to this size are paired out; larger ones (a common pattern on this range) are searched again.
LEAF_SIZE = 64
#: A bucket is searched again at most this deep (each level multiplies the range indexes), then compared.
_MAX_DEPTH = 2
_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93], dtype=np.uint64)


def hash_words(phashes: Sequence[int]) -> tuple[np.ndarray, int]:
    """Pack non-negative integer hashes into (n, words) uint64 (most significant word first), and their bit width."""
    values = [int(h) for h in phashes]
    if any(v < 0 for v in values):
        raise ValueError("hashes must be non-negative integers")
    nbits = max((v.bit_length() for v in values), default=0)
    nwords = max(1, -(-nbits // 64))
    if nwords == 1:
        return np.array(values, dtype=np.uint64).reshape(-1, 1), nbits
    raw = b"".join(v.to_bytes(8 * nwords, "big") for v in values)
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(-1, nwords), nbits


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount(x: np.ndarray) -> np.ndarray:
    """Per-element popcount of a uint64 array."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return _POPCOUNT8[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.uint8)


def brute_pairs(words: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """All (i < j) within threshold bits, comparing every pair (blocked; the reference for the index)."""
    n = words.shape[0]
    first = np.ascontiguousarray(words[:, 0])
    out_i, out_j = [], []
    for start in range(0, n, _BLOCK_ROWS):
        stop = min(start + _BLOCK_ROWS, n)
        # the first 64-bit word alone already exceeds the threshold for most pairs: filter on it
        dist = popcount(first[start:stop, None] ^ first[None, start:])
        ii, jj = np.nonzero(dist <= threshold)
        keep = jj > ii  # both offsets are `start`, so this is j > i globally
        ii, jj = ii[keep] + start, jj[keep] + start
        if words.shape[1] > 1 and ii.size:
            total = dist[ii - start, jj - start].astype(np.uint16)
            for w in range(1, words.shape[1]):
                total += popcount(words[ii, w] ^ words[jj, w])
            close = total <= threshold
            ii, jj = ii[close], jj[close]
        out_i.append(ii)
        out_j.append(jj)
    if not out_i:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(out_i).astype(np.int64), np.concatenate(out_j).astype(np.int64)


def range_masks(nwords: int, positions: np.ndarray, parts: int) -> np.ndarray:
    """(parts, nwords) uint64 masks dealing the bit positions out to parts disjoint ranges, in turn.

    Dealing in turn (not cutting contiguous runs) spreads each range over the whole image: neighbouring dHash
    bits of an X-ray are correlated, and contiguous ranges collide about twice as often on real images.
    """
    masks = np.zeros((parts, nwords), dtype=np.uint64)
    for k, bit in enumerate(positions.tolist()):
        word = nwords - 1 - bit // 64  # the most significant word comes first
        masks[k % parts, word] |= np.uint64(1) << np.uint64(bit % 64)
    return masks


def _mask_positions(mask: np.ndarray) -> np.ndarray:
    """The bit positions set in a (nwords,) mask."""
    nwords = mask.size
    return np.array(
        [64 * (nwords - 1 - w) + b for w in range(nwords) for b in range(64) if (int(mask[w]) >> b) & 1], dtype=np.int64
    )


def _range_keys(words: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """One uint64 key per hash for the bits under mask: equal bits give equal keys (unequal rarely collide)."""
    key = np.zeros(words.shape[0], dtype=np.uint64)
    for w in np.flatnonzero(mask):
        part = (words[:, w] & mask[w]) * _MIX[w % len(_MIX)]
        key ^= part ^ (part >> np.uint64(29))
    return key


def _close(words: np.ndarray, a: np.ndarray, b: np.ndarray, threshold: int) -> np.ndarray:
    """Codes i * 2**32 + j (i < j) of the pairs (a[k], b[k]) within threshold bits, checked in batches."""
    lo, hi = np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)
    out = []
    for start in range(0, lo.size, _VERIFY_BATCH):
        ii, jj = lo[start : start + _VERIFY_BATCH], hi[start : start + _VERIFY_BATCH]
        dist = popcount(words[ii] ^ words[jj]).sum(axis=1, dtype=np.uint16)
        keep = dist <= threshold
        out.append((ii[keep] << 32) | jj[keep])
    return np.concatenate(out) if out else np.empty(0, np.int64)


def _search(
    words: np.ndarray, members: np.ndarray, positions: np.ndarray, threshold: int, leaf: int, depth: int = 0
) -> list[np.ndarray]:
    """Codes of the close pairs among members, whose hashes agree on every bit outside positions."""
    parts = threshold + 1
    if members.size <= leaf or depth >= _MAX_DEPTH or positions.size // parts < MIN_RANGE_BITS:
        ii, jj = brute_pairs(words[members], threshold)
        return [_close(words, members[ii], members[jj], threshold)]
    found = []
    for mask in range_masks(words.shape[1], positions, parts):
        keys = _range_keys(words[members], mask)
        order = np.argsort(keys, kind="stable")
        ranked = keys[order]
        starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
        sizes = np.diff(np.r_[starts, ranked.size])
        for size in np.unique(sizes[(sizes > 1) & (sizes <= leaf)]):
            local = order[starts[sizes == size][:, None] + np.arange(size)]  # (buckets, size)
            ti, tj = np.triu_indices(int(size), 1)
            found.append(_close(words, members[local[:, ti].ravel()], members[local[:, tj].ravel()], threshold))
        # a large bucket agrees on this range: search it again on the other bits (still exact, by pigeonhole)
        rest = np.setdiff1d(positions, _mask_positions(mask))
        for first, size in zip(starts[sizes > leaf].tolist(), sizes[sizes > leaf].tolist(), strict=True):
            found.extend(_search(words, members[order[first : first + size]], rest, threshold, leaf, depth + 1))
    return found


def indexed_pairs(
    words: np.ndarray, nbits: int, threshold: int, leaf: int = LEAF_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """All (i < j) within threshold bits, sorted, through threshold + 1 range indexes checked on the full hash.

    Sets of at most leaf hashes (and buckets that size) are compared pair by pair.
    """
    n = words.shape[0]
    if n >= 1 << 31:
        raise ValueError(f"indexed_pairs handles fewer than 2**31 hashes, got {n}")
    if threshold + 1 > max(nbits, 1):  # every pair is within the threshold: nothing to index
        return brute_pairs(words, threshold)
    found = _search(words, np.arange(n, dtype=np.int64), np.arange(nbits, dtype=np.int64), threshold, max(2, leaf))
    codes = np.unique(np.concatenate(found)) if found else np.empty(0, np.int64)
    return codes >> 32, codes & 0xFFFFFFFF


def use_index(nbits: int, threshold: int) -> bool:
    """Whether the multi-index hash beats the brute force for hashes of nbits at this threshold."""
    return threshold >= 0 and nbits // (threshold + 1) >= MIN_RANGE_BITS
