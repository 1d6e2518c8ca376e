"""Checkpoints: written atomically, and byte for byte the same for the same state."""

from __future__ import annotations

import os

import torch

from cxr.training.checkpoints import save_checkpoint


def test_a_checkpoint_is_the_same_bytes_whichever_process_writes_it(tmp_path, monkeypatch) -> None:
    """DVC hashes models/best.pt: the same state must give the same file, whatever the writer's PID."""
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3}
    written = []
    for pid in (1234, 56789):
        monkeypatch.setattr(os, "getpid", lambda pid=pid: pid)
        path = tmp_path / f"run{pid}" / "best.pt"
        save_checkpoint(path, state)
        written.append(path.read_bytes())
    assert written[0] == written[1]
    assert not list(tmp_path.rglob("*.tmp"))
