"""Torchvision classifiers by name, adapted to one grayscale input channel."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import torch
from torch import nn

from cxr.core.archs import SUPPORTED_ARCHS

log = logging.getLogger(__name__)


class WeightsUnavailable(RuntimeError):
    """Pretrained weights could not be loaded; the message says why and what to do."""


def _first_conv(model: nn.Module, arch: str) -> tuple[nn.Module, str]:
    if arch.startswith("resnet"):
        return model, "conv1"
    if arch.startswith("densenet"):
        return model.features, "conv0"
    if arch.startswith("efficientnet"):
        return model.features[0], "0"
    if arch.startswith("convnext"):
        return model.features[0], "0"
    raise ValueError(f"unknown arch {arch!r}")


def _to_gray_input(model: nn.Module, arch: str) -> None:
    """Replace the first convolution by a 1-channel one whose kernel is the RGB kernels' sum."""
    parent, name = _first_conv(model, arch)
    old: nn.Conv2d = getattr(parent, name)
    new = nn.Conv2d(
        1,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        groups=old.groups,
        bias=old.bias is not None,
    )
    with torch.no_grad():
        # A gray image replicated to RGB gives the same response as the summed kernel on one channel.
        new.weight.copy_(old.weight.sum(dim=1, keepdim=True))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    setattr(parent, name, new)


def _replace_head(model: nn.Module, arch: str, num_classes: int) -> None:
    if arch.startswith("resnet"):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    elif arch.startswith("densenet"):
        model.classifier = nn.Linear(model.classifier.in_features, num_classes)
    elif arch.startswith(("efficientnet", "convnext")):
        last = model.classifier[-1]
        model.classifier[-1] = nn.Linear(last.in_features, num_classes)
    else:  # pragma: no cover - guarded by SUPPORTED_ARCHS
        raise ValueError(f"unknown arch {arch!r}")


def _hub_reachable(url: str, timeout_s: float) -> bool:
    host = url.split("/")[2]
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _pretrained_state(arch: str, weights: str, timeout_s: float) -> dict[str, torch.Tensor]:
    """ImageNet weights from a local file, torchvision's cache, or the network, failing fast."""
    import torchvision

    path = Path(weights).expanduser()
    if path.suffix in {".pt", ".pth"} or path.exists():
        if not path.is_file():
            raise WeightsUnavailable(f"weights file {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state.get("model", state) if isinstance(state, dict) else state
    try:
        enum = torchvision.models.get_model_weights(arch)
        spec = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    except (KeyError, ValueError):
        raise WeightsUnavailable(f"train.weights={weights!r} is not a weights name of {arch}") from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(spec.url).name
    if not cached.exists() and not _hub_reachable(spec.url, timeout_s):
        raise WeightsUnavailable(
            f"ImageNet weights {spec} are not in the cache ({cached}) and {spec.url.split('/')[2]} "
            f"cannot be reached. Copy the file there, set train.weights to a local .pth file, "
            f"or set train.weights: null to train from scratch."
        )
    return spec.get_state_dict(progress=False, check_hash=True)


def build_model(arch: str, num_classes: int, weights: str | None = None, timeout_s: float = 5.0) -> nn.Module:
    """A torchvision classifier with a 1-channel stem and a ``num_classes`` head."""
    import torchvision

    if arch not in SUPPORTED_ARCHS:
        raise ValueError(f"unknown arch {arch!r}; supported: {sorted(SUPPORTED_ARCHS)}")
    model = torchvision.models.get_model(arch, weights=None)
    if weights:
        model.load_state_dict(_pretrained_state(arch, weights, timeout_s))
        log.info("loaded pretrained weights %s for %s", weights, arch)
    _to_gray_input(model, arch)
    _replace_head(model, arch, num_classes)
    return model
