"""Inference: load a checkpoint, choose the device, batched logits and calibrated probabilities.

Evaluation, Grad-CAM, the drift check, the shortcut probes and the served model use these; none of them
imports the training loop, and this module imports nothing from it either.
"""

from __future__ import annotations

import pickle
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


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (truncated, foreign, or not a checkpoint); the message names it."""


#: What every checkpoint the train step writes holds besides the weights.
CHECKPOINT_KEYS: tuple[str, ...] = ("model", "arch", "classes", "image_size")


def _first_line(err: BaseException, limit: int = 200) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "..."


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint safely (tensors and plain containers only); CheckpointError naming the file otherwise."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: checkpoint not found; run the train step first") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: a folder, not a checkpoint") from None
    except (RuntimeError, ValueError, EOFError, OSError, pickle.UnpicklingError) as err:
        # A truncated zip ("PytorchStreamReader failed ..."), a pickle with code in it (refused, never run), text.
        raise CheckpointError(f"{path}: not a checkpoint that can be read ({_first_line(err)})") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a checkpoint written by the train step (it lacks {missing})")
    return state


def output_stride(meta: dict) -> int:
    """The output stride a checkpoint's model was trained at (32 where the checkpoint predates the setting)."""
    return int((meta.get("params") or {}).get("output_stride", 32))


def load_trained(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """The model of a checkpoint, in eval mode, with its metadata (classes, arch, image size)."""
    state = load_checkpoint(path)
    try:
        model = build_model(state["arch"], len(state["classes"]), None, output_stride=output_stride(state))
        model.load_state_dict(state["model"])
    except (RuntimeError, ValueError, TypeError) as err:
        raise CheckpointError(
            f"{path}: its weights do not fit a {state['arch']} with {len(state['classes'])} classes "
            f"({_first_line(err)})"
        ) from None
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
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp: bool = False,
    channels_last: bool = False,
    desc: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, K) and labels (N,) for a deterministic loader; with ``desc``, its progress is shown."""
    from cxr.ops.progress import Progress  # here: the served model imports this module and needs none of it

    was_training = model.training
    model.eval()
    logits, labels = [], []
    with Progress(len(loader.dataset), desc or "", enabled=desc is not None) as progress:
        for images, y in loader:
            with autocast(device, amp):
                out = model(to_input(images, device, channels_last))
            logits.append(out.float().cpu())
            labels.append(y)
            progress.update(len(y))
    model.train(was_training)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()
