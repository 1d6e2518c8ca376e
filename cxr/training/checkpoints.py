"""Checkpoints: atomic, byte-reproducible writes, what best.pt and last.pt hold, and the resume that reads last.pt."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxr.core.io import atomic_open
from cxr.core.paths import ResolvedPaths
from cxr.model.inference import CheckpointError, load_checkpoint

log = logging.getLogger(__name__)


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically: a crash mid-write never leaves a broken checkpoint.

    Through a file object, so the zip's record names do not come from the temporary file's name (which holds
    the PID): the same state gives the same bytes, and DVC records the same hash for a rerun.
    """
    with atomic_open(path, "wb") as fh:
        torch.save(state, fh)


def rng_state() -> dict:
    """The torch, NumPy, Python (and CUDA) generators' states, as tensors a ``weights_only`` load accepts."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
    }
    state["python"] = torch.tensor(list(map(int, random.getstate()[1])), dtype=torch.int64)
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Put back the generators' states that :func:`rng_state` took."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(state["numpy_pos"]), 0, 0.0))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def better(monitor: str, new: float, best: float | None) -> bool:
    """Whether ``new`` beats ``best`` on ``monitor`` (lower for the loss, higher for the rest); anything beats None."""
    if best is None:
        return True
    return new < best if monitor == "val_loss" else new > best


@dataclass
class TrainState:
    """Where the loop stands: the history, the best epoch so far and its weights; last.pt carries it for a resume."""

    start_epoch: int = 0
    best_score: float | None = None
    best_epoch: int = 0
    stale: int = 0  # epochs since the last improvement (early stopping counts them)
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)  # best.pt's contents, weights on the CPU

    @property
    def resumed_from(self) -> int | None:
        """The epoch a resumed run started from; None for a fresh one (a resume always starts after epoch 1)."""
        return self.start_epoch or None

    def record(self, row: dict, monitor: str) -> bool:
        """Add an epoch's history row; True when its ``monitor`` score is the best so far."""
        self.history.append(row)
        score = row[monitor]
        improved = better(monitor, score, self.best_score)
        if improved:
            self.best_score, self.best_epoch, self.stale = score, row["epoch"], 0
        else:
            self.stale += 1
        return improved


@dataclass(frozen=True)
class Parts:
    """The model and what trains it: what last.pt saves and a resume restores in place."""

    model: nn.Module
    ema: nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler

    @property
    def scored(self) -> nn.Module:
        """The weights validated, kept and shipped: with EMA, the average."""
        return self.ema.module if self.ema is not None else self.model


def save_epoch(
    paths: ResolvedPaths, meta: dict, parts: Parts, state: TrainState, fingerprint: dict, improved: bool, complete: bool
) -> None:
    """The epoch's checkpoints: best.pt (kept as ``state.best``) when it ``improved``; last.pt, to resume, always."""
    if improved:
        # A copy on the CPU: last.pt carries it, so a resumed run can always restore best.pt.
        weights = {k: v.detach().to("cpu", copy=True) for k, v in parts.scored.state_dict().items()}
        state.best = {"model": weights, **meta}
        save_checkpoint(paths.best_checkpoint, state.best)
    ema = parts.ema
    save_checkpoint(
        paths.last_checkpoint,
        {
            **meta,
            "model": parts.scored.state_dict(),
            **({"train_model": parts.model.state_dict(), "ema": ema.state_dict()} if ema is not None else {}),
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "scaler": parts.scaler.state_dict(),
            "rng": rng_state(),
            "best_score": state.best_score,
            "best_epoch": state.best_epoch,
            "best": state.best,
            "stale": state.stale,
            "history": json.dumps(state.history),
            "fingerprint": fingerprint,
            "complete": complete,
        },
    )


def restore(path: Path, fingerprint: dict, parts: Parts) -> TrainState | None:
    """Load an unfinished run with the same ``fingerprint`` from ``path`` into ``parts``; its state, or None."""
    if not path.exists():
        return None
    try:
        state = load_checkpoint(path)
    except CheckpointError as err:
        # The resume point is a convenience: one that cannot be read means starting afresh, never a stop.
        log.warning("%s; training starts afresh", err)
        return None
    if state.get("fingerprint") != fingerprint or state.get("complete") or "best" not in state:
        return None
    parts.model.load_state_dict(state["train_model"] if "train_model" in state else state["model"])
    if parts.ema is not None:
        parts.ema.load_state_dict(state["ema"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.scheduler.load_state_dict(state["scheduler"])
    parts.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return TrainState(
        start_epoch=int(state["epoch"]) + 1,
        best_score=state["best_score"],
        best_epoch=int(state["best_epoch"]),
        stale=int(state["stale"]),
        history=json.loads(state["history"]),
        best=state["best"],
    )


@contextlib.contextmanager
def exclusive(model_dir: Path, enabled: bool = True) -> Iterator[None]:
    """Hold ``<model_dir>/.train.lock`` while training, so that a second training into the same folder (a rerun
    while an orphaned one still runs, after its ``dvc repro`` was killed) stops at once, naming the first one.

    An OS file lock: it goes with the process that held it, however that process ends.
    """
    if not enabled:
        yield
        return
    from filelock import FileLock, Timeout

    model_dir.mkdir(parents=True, exist_ok=True)
    owner = model_dir / ".train.pid"
    lock = FileLock(model_dir / ".train.lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        pid = owner.read_text().strip() if owner.is_file() else "unknown"
        raise RuntimeError(
            f"{model_dir}: another training (process {pid}) is writing its checkpoints here; "
            "let it finish or stop it, then run again"
        ) from None
    try:
        owner.write_text(f"{os.getpid()}\n")
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()
