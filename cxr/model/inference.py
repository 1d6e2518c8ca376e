"""Inference: load a checkpoint, choose the device, batched logits and calibrated probabilities.

Evaluation, Grad-CAM, the drift check, the shortcut probes and the served model use these; none of them
imports the training loop, and this module imports nothing from it either.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from cxr.model.networks import build_model
from cxr.model.preprocess import to_input


def pick_device(choice: str) -> torch.device:
    """``auto`` takes the GPU when there is one."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on GPUs that have it when ``amp`` is on; nothing otherwise."""
    if amp and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint safely (tensors and plain containers only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_trained(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """The model of a checkpoint, in eval mode, with its metadata (classes, arch, image size)."""
    state = load_checkpoint(path)
    model = build_model(state["arch"], len(state["classes"]), None)
    model.load_state_dict(state["model"])
    model.to(device).eval()
    meta = {k: v for k, v in state.items() if k != "model"}
    return model, meta


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``."""
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@torch.no_grad()
def predict(
    model: nn.Module, loader: DataLoader, device: torch.device, amp: bool = False, channels_last: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, K) and labels (N,) for a deterministic loader."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for images, y in loader:
        with autocast(device, amp):
            out = model(to_input(images, device, channels_last))
        logits.append(out.float().cpu())
        labels.append(y)
    model.train(was_training)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def read_temperature(path: Path) -> float:
    """The ``temperature`` of a calibration.json written by the evaluate step."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: calibration file not found; run the evaluate step first") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    t = data.get("temperature") if isinstance(data, dict) else None
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not np.isfinite(t) or t <= 0:
        raise ValueError(f"{path}: 'temperature' must be a positive number, got {t!r}")
    return float(t)
