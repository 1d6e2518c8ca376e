"""The Kaggle download: no credentials or no network fail fast, a completed download is reused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cxr.data import kaggle
from cxr.data.kaggle import DownloadError, download_kaggle


def _no_credentials(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.setenv("HOME", str(home))
    for key in list(os.environ):
        if key.startswith("KAGGLE") or key == "XDG_CONFIG_HOME":
            monkeypatch.delenv(key, raising=False)
    (home / "empty").mkdir(parents=True)
    # kagglehub resolves ~/.kaggle at import time; point its lookup at an empty folder too
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / "empty"))


def test_download_without_credentials_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_credentials(monkeypatch, tmp_path / "home")
    with pytest.raises(DownloadError, match=r"(?s)KAGGLE_USERNAME.*local"):
        download_kaggle("tawsifurrahman/covid19-radiography-database", 5, tmp_path / "cache", timeout_s=3)
    assert "KAGGLEHUB_CACHE" not in os.environ or os.environ["KAGGLEHUB_CACHE"] != str(tmp_path / "cache")


def test_download_offline_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_credentials(monkeypatch, tmp_path / "home")
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0" * 32)
    monkeypatch.setattr(kaggle, "KAGGLE_HOST", "kaggle.invalid")
    for key in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(DownloadError, match="cannot reach"):
        download_kaggle("tawsifurrahman/covid19-radiography-database", None, tmp_path / "cache", timeout_s=2)


def test_download_reuses_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_credentials(monkeypatch, tmp_path / "home")
    base = tmp_path / "cache" / "datasets" / "tawsifurrahman" / "covid19-radiography-database"
    done = base / "versions" / "5"
    (done / "COVID-19_Radiography_Dataset").mkdir(parents=True)
    (base / "versions" / "6").mkdir()  # an interrupted download: no completion marker
    with pytest.raises(DownloadError):
        download_kaggle("tawsifurrahman/covid19-radiography-database", 6, tmp_path / "cache", timeout_s=1)
    (base / "5.complete").touch()  # kagglehub's completion marker
    got = download_kaggle("tawsifurrahman/covid19-radiography-database", 5, tmp_path / "cache")
    assert got == done.resolve()
    got = download_kaggle("tawsifurrahman/covid19-radiography-database", None, tmp_path / "cache", timeout_s=1)
    assert got == done.resolve()
