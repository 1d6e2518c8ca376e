"""Checkpoints: atomic, byte-reproducible writes and the random-number state that a resume restores."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from cxr.core.io import atomic_open


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically: a crash mid-write never leaves a broken checkpoint.

    Through a file object, so the zip's record names do not come from the temporary file's name (which holds
    the PID): the same state gives the same bytes, and DVC records the same hash for a rerun.
    """
    with atomic_open(path, "wb") as fh:
        torch.save(state, fh)


def rng_state() -> dict:
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
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(state["numpy_pos"]), 0, 0.0))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
