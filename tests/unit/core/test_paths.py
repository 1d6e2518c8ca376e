"""Resolved paths: the cache folder can live outside the project."""

from __future__ import annotations

from pathlib import Path


def test_cache_dir_can_be_moved_out_of_the_project(tmp_path: Path, monkeypatch) -> None:
    from cxr.core.paths import CACHE_DIR_ENV, Paths

    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "shared"))
    assert Paths().resolve(tmp_path / "p").cache == (tmp_path / "shared").resolve()
    monkeypatch.delenv(CACHE_DIR_ENV)
    assert Paths().resolve(tmp_path / "p").cache == tmp_path / "p" / "data" / "cache"
