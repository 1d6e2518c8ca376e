"""The input pipeline: grayscale handling, normalisation, augmentation presets and the seeded sampler."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from oracles import train_transform

from cxr.core.sections import Augment
from cxr.data.manifest import Manifest
from cxr.model.cache import CachedImages, cache_key, decoded_cache
from cxr.model.preprocess import GRAY_MEAN, GRAY_STD, decode, to_gray, to_input
from cxr.training.dataset import AugmentedImages, SeededSampler
from cxr.training.presets import draw_params


def test_to_gray_handles_every_mode() -> None:
    gray = np.full((70, 70), 100, np.uint8)
    assert to_gray(gray) is gray
    bgr = np.dstack([gray] * 3)
    assert np.array_equal(to_gray(bgr), gray)
    bgra = np.dstack([gray] * 3 + [np.full_like(gray, 255)])
    assert np.array_equal(to_gray(bgra), gray)
    sixteen = gray.astype(np.uint16) * 256
    assert np.array_equal(to_gray(sixteen), gray)


def test_decode_png_and_jpeg_bytes_to_square(tmp_path: Path) -> None:
    img = np.tile(np.arange(0, 250, 2, dtype=np.uint8), (100, 1))
    for ext in (".png", ".jpg"):
        ok, buf = cv2.imencode(ext, np.dstack([img] * 3))
        out = decode(buf.tobytes(), 64)
        assert out.shape == (64, 64) and out.dtype == np.uint8
    with pytest.raises(ValueError, match="broken.png"):
        decode(b"garbage", 64, "broken.png")


def test_normalisation_is_the_gray_imagenet_one() -> None:
    batch = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    x = to_input(batch, "cpu")
    assert x.dtype == torch.float32
    assert x[0].item() == pytest.approx((0 - GRAY_MEAN) / GRAY_STD)
    assert x[1].item() == pytest.approx((1 - GRAY_MEAN) / GRAY_STD)
    assert batch.dtype == torch.uint8 and batch[1].item() == 255  # input untouched


def test_augmentation_is_a_function_of_the_seed() -> None:
    images = np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8)
    ds = AugmentedImages(images, np.array([0, 1, 2]), Augment(p=1.0))
    a, b, c = ds[(1, 123)][0], ds[(1, 123)][0], ds[(1, 124)][0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Deferred to the device: the untouched row travels with the parameters the same seed draws.
    image, label, params = AugmentedImages(images, np.array([0, 1, 2]), Augment(p=1.0), defer=True)[(1, 123)]
    assert torch.equal(image[0], torch.from_numpy(images[1])) and label == 1
    assert params.dtype == torch.float64 and torch.equal(params, torch.from_numpy(draw_params(Augment(p=1.0), 123)))
    plain = CachedImages(images, np.array([0, 1, 2]))
    assert torch.equal(plain[1][0][0], torch.from_numpy(images[1]))  # eval is the identity on the cache


def test_horizontal_flip_is_off_by_default() -> None:
    names = [type(t).__name__ for t in train_transform(Augment()).transforms]
    assert "HorizontalFlip" not in names
    assert "HorizontalFlip" in [type(t).__name__ for t in train_transform(Augment(hflip=0.5)).transforms]


def test_sampler_is_seeded_resumable_and_shards() -> None:
    s = SeededSampler(10, seed=5)
    s.set_epoch(3)
    first = list(s)
    s.set_epoch(3)
    assert list(s) == first and sorted(i for i, _ in first) == list(range(10))
    s.set_epoch(4)
    assert list(s) != first
    shards = []
    for rank in (0, 1):
        r = SeededSampler(10, seed=5, rank=rank, world_size=2)
        r.set_epoch(3)
        shards.append(list(r))
    assert len(shards[0]) == len(shards[1]) == 5
    assert sorted(shards[0] + shards[1]) == sorted(first)


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


def test_cache_dir_can_be_moved_out_of_the_project(tmp_path: Path, monkeypatch) -> None:
    from cxr.core.paths import CACHE_DIR_ENV, Paths

    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "shared"))
    assert Paths().resolve(tmp_path / "p").cache == (tmp_path / "shared").resolve()
    monkeypatch.delenv(CACHE_DIR_ENV)
    assert Paths().resolve(tmp_path / "p").cache == tmp_path / "p" / "data" / "cache"
