"""Kaggle download through kagglehub: credentials, reachability, the download cache."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

KAGGLE_HOST = "www.kaggle.com"


class DownloadError(RuntimeError):
    """The dataset could not be downloaded (offline, no credentials, or Kaggle refused)."""


def _credentials_source() -> str | None:
    """Where Kaggle credentials come from, or None when there are none."""
    env = os.environ
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    if env.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    home = Path.home()
    folders = [home / ".kaggle", home / ".config" / "kaggle"]
    if env.get("KAGGLE_CONFIG_DIR"):
        folders.insert(0, Path(env["KAGGLE_CONFIG_DIR"]))
    if env.get("XDG_CONFIG_HOME"):
        folders.append(Path(env["XDG_CONFIG_HOME"]) / "kaggle")
    for folder in folders:
        for name in ("kaggle.json", "access_token"):
            if (folder / name).is_file():
                return str(folder / name)
    with contextlib.suppress(Exception):  # kagglehub's own lookup (API differs between versions)
        from kagglehub.config import get_kaggle_credentials

        if get_kaggle_credentials():
            return "kagglehub"
    return None


def _reachable(host: str, port: int, timeout_s: float) -> str | None:
    """None when a TCP connection to host:port opens within timeout_s (DNS included), else the reason."""
    outcome: list[str | None] = []

    def attempt() -> None:
        """Open and close one connection, recording the outcome."""
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                outcome.append(None)
        except OSError as exc:
            outcome.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=attempt, name="kaggle-reachability", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        return f"no answer within {timeout_s:g}s"
    return outcome[0]


def _proxy_endpoint() -> tuple[str, int] | None:
    """Host and port of an HTTPS proxy from the environment, if one is set."""
    for key in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        if os.environ.get(key):
            parsed = urlparse(os.environ[key] if "://" in os.environ[key] else f"//{os.environ[key]}")
            if parsed.hostname:
                return parsed.hostname, parsed.port or 8080
    return None


def _cached_version(cache_dir: Path, handle: str, version: int | None) -> Path | None:
    """A complete earlier kagglehub download of handle (that version, or the newest) under cache_dir."""
    base = cache_dir / "datasets" / handle
    if version is not None:
        candidates = [version]
    else:
        found = base.glob("*.complete") if base.is_dir() else []
        candidates = sorted((int(m.stem) for m in found if m.stem.isdigit()), reverse=True)
    for v in candidates:
        path = base / "versions" / str(v)
        if (base / f"{v}.complete").is_file() and path.is_dir():  # kagglehub's completion marker
            return path
    return None


@contextlib.contextmanager
def _env(key: str, value: str) -> Iterator[None]:
    """Set an environment variable for the duration of a block."""
    old = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def download_kaggle(handle: str, version: int | None, cache_dir: Path, timeout_s: float = 10.0) -> Path:
    """Download a Kaggle dataset with kagglehub into cache_dir, reusing an earlier download.

    Raises DownloadError fast when offline or unauthenticated.
    """
    handle = handle.strip().strip("/")
    if "/versions/" in handle:
        handle, _, pinned = handle.partition("/versions/")
        if version is not None and int(pinned) != version:
            raise ValueError(f"handle pins version {pinned} but version={version} was given")
        version = int(pinned)
    if handle.count("/") != 1:
        raise ValueError(f"Kaggle handle must look like 'owner/dataset', got {handle!r}")
    cache_dir = Path(cache_dir).expanduser().resolve()
    fix = "or ingest a local copy instead (data source: local, with path: <folder or .zip of the dataset>)"

    cached = _cached_version(cache_dir, handle, version)
    if cached is not None and version is not None:
        logger.info("reusing cached Kaggle download %s", cached)
        return cached

    problem = None
    creds = _credentials_source()
    if creds is None:
        problem = (
            "no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY, or put kaggle.json in ~/.kaggle/ "
            "(or ~/.config/kaggle/)"
        )
    else:
        host, port = _proxy_endpoint() or (KAGGLE_HOST, 443)
        reason = _reachable(host, port, timeout_s)
        if reason is not None:
            problem = f"cannot reach {host}:{port} ({reason}); the machine seems offline"
    if problem is not None:
        if cached is not None:
            logger.warning("%s; using the newest cached download %s", problem, cached)
            return cached
        raise DownloadError(f"cannot download Kaggle dataset {handle!r}: {problem}; {fix}")

    try:
        import kagglehub
    except ImportError as exc:
        raise DownloadError(f"kagglehub is not installed (pip install kagglehub); {fix}") from exc
    ref = handle if version is None else f"{handle}/versions/{version}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    logger.info("downloading Kaggle dataset %s into %s (credentials: %s)", ref, cache_dir, creds)
    try:
        with _env("KAGGLEHUB_CACHE", str(cache_dir)):
            path = kagglehub.dataset_download(ref)
    except Exception as exc:  # kagglehub raises requests/HTTP/own errors
        raise DownloadError(f"kagglehub could not download {ref!r}: {type(exc).__name__}: {exc}; {fix}") from exc
    logger.info("Kaggle dataset %s is at %s", ref, path)
    return Path(path)
