"""Progress: a bar on a terminal, a log line at a steady interval elsewhere (no bar in a log file)."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from cxr.ops import progress as progress_module
from cxr.ops.progress import Progress


def test_without_a_terminal_a_line_every_interval_says_how_far_and_how_fast(monkeypatch, caplog) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    monkeypatch.setenv(progress_module.INTERVAL_ENV, "0")
    caplog.set_level(logging.INFO, logger="cxr.progress")
    with Progress(64, "epoch 1/2") as p:
        for _ in range(4):
            p.update(16, loss="0.6931")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3  # not after the last update: the loop's own summary follows it
    assert lines[0].startswith("epoch 1/2: 16/64 img (25%), ") and " img/s, ETA " in lines[0]
    assert lines[0].endswith(", loss 0.6931")
    assert sys.stderr.getvalue() == ""  # no bar, no carriage returns


def test_the_interval_keeps_a_log_quiet(monkeypatch, caplog) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setenv(progress_module.INTERVAL_ENV, "3600")
    caplog.set_level(logging.INFO, logger="cxr.progress")
    with Progress(1000, "decoding") as p:
        for _ in range(1000):
            p.update()
    assert caplog.records == []


def test_on_a_terminal_a_bar_and_no_log_lines(monkeypatch, caplog) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Tty())
    monkeypatch.setenv(progress_module.INTERVAL_ENV, "0")
    caplog.set_level(logging.INFO, logger="cxr.progress")
    with Progress(10, "Grad-CAM") as p:
        p.update(10)
    assert caplog.records == []
    assert "Grad-CAM" in sys.stderr.getvalue()


@pytest.mark.parametrize(
    ("text", "remote", "hint"),
    [
        ("To track the changes with git, run:", False, True),
        ("\tgit add dvc.lock", False, True),
        ("Use `dvc push` to send your updates to remote storage.", False, True),
        ("Use `dvc push` to send your updates to remote storage.", True, False),
        ("Running stage 'train':", False, False),
    ],
)
def test_dvc_advice_is_told_from_its_output(text: str, remote: bool, hint: bool) -> None:
    from cxr.ops.dvc import is_hint

    assert is_hint(text, remote) is hint
