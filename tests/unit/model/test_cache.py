"""The decoded cache: keyed by content and size, built once when several processes want it at once."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from cxr.data.manifest import Manifest
from cxr.model.cache import cache_key, decoded_cache


def test_decoded_cache_is_keyed_by_content_and_size(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    (raw / "A" / "images").mkdir(parents=True)
    rows = []
    for i in range(3):
        cv2.imwrite(str(raw / "A" / "images" / f"{i}.png"), np.full((90, 90), i * 50, np.uint8))
        rows.append(
            {
                "path": f"A/images/{i}.png",
                "sha256": str(i),
                "label": "A",
                "split": "train",
                "folder": "A",
                "group": str(i),
                "source": "",
            }
        )
    m = Manifest(tuple(rows))
    arr = decoded_cache(m, raw, tmp_path / "cache", 32)
    assert arr.shape == (3, 32, 32) and int(arr[2].mean()) == 100
    assert cache_key(m, 32) != cache_key(m, 48)
    changed = Manifest(tuple({**r, "sha256": r["sha256"] + "x"} for r in rows))
    assert cache_key(changed, 32) != cache_key(m, 32)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1


def test_decoded_cache_is_built_once_by_concurrent_writers(tmp_path: Path, monkeypatch) -> None:
    """Queued experiments or a search's trials sharing one cache: one builds it, the others wait and read it."""
    import threading

    from cxr.model import cache as data

    raw = tmp_path / "raw"
    (raw / "A" / "images").mkdir(parents=True)
    rows = []
    for i in range(4):
        cv2.imwrite(str(raw / "A" / "images" / f"{i}.png"), np.full((64, 64), i * 40, np.uint8))
        rows.append(
            {
                "path": f"A/images/{i}.png",
                "sha256": str(i),
                "label": "A",
                "split": "train",
                "folder": "A",
                "group": str(i),
                "source": "",
            }
        )
    m = Manifest(tuple(rows))
    builds, real_build = [], data._build_cache
    start = threading.Barrier(4)

    def counted(*args, **kwargs):
        builds.append(1)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(data, "_build_cache", counted)
    results: list[np.ndarray] = []

    def worker() -> None:
        start.wait()
        results.append(np.array(decoded_cache(m, raw, tmp_path / "cache", 32)))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert len(results) == 4 and all(np.array_equal(r, results[0]) for r in results)
    assert not list((tmp_path / "cache").glob("*.tmp"))
