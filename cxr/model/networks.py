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


def _keep_last_resolution(model: nn.Module) -> None:
    """A ResNet whose last stage keeps the previous stage's resolution (output stride 16): its first block's
    strided convolution and shortcut step by 1. The weights keep their shapes (ImageNet ones still load)."""
    first = model.layer4[0]
    strided = first.conv2 if first.conv2.stride != (1, 1) else first.conv1  # Bottleneck strides in conv2
    strided.stride = (1, 1)
    if first.downsample is not None:
        first.downsample[0].stride = (1, 1)


def resnet_stage_strides(model: nn.Module) -> dict[str, int]:
    """Each ResNet stage's output stride (``layer1`` ... ``layer4``), from its convolutions' strides."""
    stride, out = 4, {}  # the stem: a stride-2 convolution and a stride-2 max pool
    for name in ("layer1", "layer2", "layer3", "layer4"):
        stride *= max(m.stride[0] for m in getattr(model, name)[0].modules() if isinstance(m, nn.Conv2d))
        out[name] = stride
    return out


def build_model(
    arch: str, num_classes: int, weights: str | None = None, timeout_s: float = 5.0, output_stride: int = 32
) -> nn.Module:
    """A torchvision classifier with a 1-channel stem and a ``num_classes`` head; ``output_stride`` 16 (resnet*
    only) keeps the last stage at the previous one's resolution."""
    import torchvision

    if arch not in SUPPORTED_ARCHS:
        raise ValueError(f"unknown arch {arch!r}; supported: {sorted(SUPPORTED_ARCHS)}")
    if output_stride not in (16, 32) or (output_stride == 16 and not arch.startswith("resnet")):
        raise ValueError(f"output_stride {output_stride!r}: 32, or 16 for resnet* only (arch {arch!r})")
    model = torchvision.models.get_model(arch, weights=None)
    if weights:
        model.load_state_dict(_pretrained_state(arch, weights, timeout_s))
        log.info("loaded pretrained weights %s for %s", weights, arch)
    _to_gray_input(model, arch)
    _replace_head(model, arch, num_classes)
    if output_stride == 16:
        _keep_last_resolution(model)
    return model


def pooled_features(model: nn.Module, arch: str) -> tuple[nn.Module, nn.Linear, bool]:
    """Where a class activation map is read: the module whose output the classifier pools, the linear classifier
    on the pooled features, and whether a ReLU comes between (DenseNet's forward applies one). ValueError for a
    head that is not one linear layer on pooled features (ConvNeXt normalises first)."""
    if arch.startswith("resnet"):
        return model.layer4, model.fc, False
    if arch.startswith("densenet"):
        return model.features, model.classifier, True
    if arch.startswith("efficientnet"):
        return model.features, model.classifier[-1], False
    raise ValueError(f"{arch}: its classifier is not one linear layer on pooled features")
