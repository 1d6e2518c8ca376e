"""Grad-CAM explanations (pytorch-grad-cam): the layer a map is read from, and the maps of a batch.

``compute_cams`` wraps the library's CAM classes in their context manager so the
hooks are always released; it leaves the caller's input tensor, the model's
train/eval flags and the parameters' ``.grad`` untouched. CAMs are float32 in
[0, 1], one (H, W) map per image at the input resolution. Where they look is
measured in :mod:`cxr.evaluation.localisation`; they are drawn in
:mod:`cxr.evaluation.overlays`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cxr.core.sections import CAM_METHODS

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


#: Per family, the module whose output is the last one at a finer stride than the last block's 32
#: (the output of a ``Sequential`` stage is that of its last block). Torchvision's layouts.
FINER_LAYERS: dict[str, dict[int, str]] = {
    "densenet": {8: "features.denseblock2", 16: "features.denseblock3"},
    "efficientnet": {8: "features.3", 16: "features.5"},
    "convnext": {8: "features.3", 16: "features.5"},
}
STRIDES = (8, 16, 32)


def _family(arch: str) -> str:
    name = arch.lower().strip()
    for family, prefixes in (
        ("resnet", ("resnet", "resnext", "wide_resnet")),
        ("densenet", ("densenet",)),
        ("efficientnet", ("efficientnet",)),
        ("convnext", ("convnext",)),
    ):
        if name.startswith(prefixes):
            return family
    raise ValueError(f"unsupported arch {arch!r} for Grad-CAM; expected resnet*, densenet*, efficientnet* or convnext*")


def target_layers(
    model: torch.nn.Module, arch: str, layer: str | None = None, stride: int = 32
) -> list[torch.nn.Module]:
    """The module whose activations the CAM reads, chosen by model family.

    ``stride`` 32 (the usual choice): the last conv block (resnet* -> ``layer4[-1]``;
    densenet*/efficientnet*/convnext* -> ``features[-1]``). 16 or 8: the last stage at that stride
    (a ResNet's from its convolutions: ``layer4`` when trained at ``train.output_stride`` 16; the others'
    from :data:`FINER_LAYERS`), a finer map for lesions that are small next to a 32-pixel cell, at the price
    of less abstract features. ``layer``: the dotted name of any submodule instead (``layer3.1.conv2``).
    ValueError for an unknown family, stride or name.
    """
    if layer is not None:
        name = str(layer).strip()
        try:
            return [model.get_submodule(name)]
        except AttributeError as exc:
            top = ", ".join(n for n, _ in model.named_children())
            raise ValueError(
                f"gradcam.target_layer {layer!r} is not a module of this {arch} model; its top-level modules: {top}"
            ) from exc
    family = _family(arch)
    if stride not in STRIDES:
        raise ValueError(f"gradcam.stride must be one of {STRIDES}, got {stride!r}")
    try:
        if family == "resnet":
            from cxr.model.networks import resnet_stage_strides

            # From the model, not the table: a ResNet trained at output stride 16 has layer4 at 16.
            at = [name for name, s in resnet_stage_strides(model).items() if s == stride]
            if stride != 32 and not at:
                raise ValueError(f"gradcam.stride {stride}: this model has no stage at that stride")
            stage = at[-1] if at else "layer4"
            # The last block when the stage is the last one (the usual CAM layer), else the whole stage.
            return [model.layer4[-1]] if stage == "layer4" else [getattr(model, stage)]
        if stride != 32:
            return [model.get_submodule(FINER_LAYERS[family][stride])]
        return [model.features[-1]]
    except (AttributeError, IndexError, TypeError) as exc:
        raise ValueError(f"model does not have the expected layout for arch {arch!r}: {exc}") from exc


def _cam_class(method: str) -> type:
    """Map a method name to the pytorch_grad_cam class."""
    import pytorch_grad_cam as lib

    classes = {
        "gradcam": lib.GradCAM,
        "gradcam++": lib.GradCAMPlusPlus,
        "gradcampp": lib.GradCAMPlusPlus,
        "hirescam": lib.HiResCAM,
        "xgradcam": lib.XGradCAM,
        "layercam": lib.LayerCAM,
        "eigencam": lib.EigenCAM,
        "eigengradcam": lib.EigenGradCAM,
        "gradcam-elementwise": lib.GradCAMElementWise,
    }
    key = method.lower().strip()
    if key not in classes:
        raise ValueError(f"unknown CAM method {method!r}; expected one of {CAM_METHODS}")
    return classes[key]


def _target_is_leaf(module: torch.nn.Module, inputs, output):
    """Forward hook on a target layer: its output becomes a fresh leaf that requires grad.

    With every parameter frozen and an input that needs no gradient, nothing below the target layer
    is recorded by autograd, so the backward pass runs through the head only: Grad-CAM needs the
    gradient at the target layer's output, never below it. The clone keeps in-place operations
    after the layer (DenseNet's final ReLU) legal on a non-leaf tensor.
    """
    import torch

    if isinstance(output, torch.Tensor) and output.is_floating_point():
        return output.detach().requires_grad_(True).clone()
    return None


def _is_channels_last(model: torch.nn.Module) -> bool:
    import torch

    w = next((p for p in model.parameters() if p.dim() == 4), None)
    return w is not None and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


def _checked_targets(images: torch.Tensor, targets: Sequence[int] | None, batch_size: int) -> list[int] | None:
    """The targets as a list of ints (None stays None); ValueError for a bad shape, target or batch size."""
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    n = int(images.shape[0])
    if targets is not None:
        targets = [int(t) for t in targets]
        if len(targets) != n:
            raise ValueError(f"got {len(targets)} targets for {n} images")
        if any(t < 0 for t in targets):
            raise ValueError(f"targets must be non-negative class indices, got {targets}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    return targets


@contextlib.contextmanager
def _prepared_for_cams(model: torch.nn.Module, layers: list[torch.nn.Module]) -> Iterator[None]:
    """Frozen parameters, channels-last and leaf target layers for the block; the model as it was afterwards.

    Restored on the way out, an error included: the hooks, the memory format, every module's train/eval flag
    and each parameter's ``requires_grad`` and ``.grad``.
    """
    import torch

    params = list(model.parameters())
    modes = {m: m.training for m in model.modules()}
    saved_grads = [p.grad for p in params]
    saved_flags = [p.requires_grad for p in params]
    was_channels_last = _is_channels_last(model)
    hooks = []
    try:
        for p in params:
            p.requires_grad_(False)
        if not was_channels_last:
            model.to(memory_format=torch.channels_last)
        # Registered before the library's own hooks, so theirs see the leaf.
        hooks = [layer.register_forward_hook(_target_is_leaf) for layer in layers]
        yield
    finally:
        for hook in hooks:
            hook.remove()
        if not was_channels_last:
            model.to(memory_format=torch.contiguous_format)
        for m, training in modes.items():
            m.train(training)
        for p, g, flag in zip(params, saved_grads, saved_flags, strict=True):
            p.requires_grad_(flag)
            p.grad = g


@dataclass(frozen=True)
class Smoothing:
    """The library's smoothing options: ``aug`` averages the maps of six test-time variants of each image
    (horizontal flip x intensity 0.9, 1, 1.1; six passes), ``eigen`` keeps the first principal component of the
    weighted activations instead of their sum."""

    aug: bool = False
    eigen: bool = False


def _one_batch(
    model: torch.nn.Module,
    layers: list[torch.nn.Module],
    cam_cls: type,
    batch: torch.Tensor,
    targets: list[int] | None,
    smoothing: Smoothing,
) -> tuple[np.ndarray | None, torch.Tensor]:
    """One batch's raw maps (None when the library swallowed an error) and its logits."""
    import torch
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    logits = None
    if smoothing.aug:
        # Each variant would otherwise explain its own prediction, and the logits would be the last variant's.
        with torch.no_grad():
            logits = model(batch)
        if targets is None:
            targets = logits.argmax(dim=1).tolist()
    cam_targets = None if targets is None else [ClassifierOutputTarget(t) for t in targets]
    result = None
    with cam_cls(model=model, target_layers=layers) as cam:
        result = cam(input_tensor=batch, targets=cam_targets, aug_smooth=smoothing.aug, eigen_smooth=smoothing.eigen)
        if logits is None and result is not None:
            logits = cam.outputs
    return result, logits


def _cams_by_batch(
    model: torch.nn.Module,
    layers: list[torch.nn.Module],
    cam_cls: type,
    images: torch.Tensor,
    targets: list[int] | None,
    batch_size: int,
    smoothing: Smoothing,
    desc: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The raw maps (B, H, W) float32, batch by batch, and the logits (B, K)."""
    import torch

    from cxr.ops.progress import Progress

    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    dtype = params[0].dtype if params and params[0].is_floating_point() else torch.float32
    n, h, w = int(images.shape[0]), int(images.shape[-2]), int(images.shape[-1])
    out = np.empty((n, h, w), dtype=np.float32)
    logits: list[np.ndarray] = []
    with torch.enable_grad(), Progress(n, desc or "", enabled=desc is not None) as progress:
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            # A copy: the caller's tensor is never touched.
            batch = images[start:stop].detach().to(device=device, dtype=dtype, copy=True)
            batch = batch.contiguous(memory_format=torch.channels_last)
            part = None if targets is None else targets[start:stop]
            result, z = _one_batch(model, layers, cam_cls, batch, part, smoothing)
            if result is None:  # the library's __exit__ swallows IndexError (e.g. a bad target index)
                raise ValueError(f"CAM computation failed for images {start}:{stop} (target index out of range?)")
            out[start:stop] = np.asarray(result, dtype=np.float32).reshape(stop - start, h, w)
            logits.append(z.detach().float().cpu().numpy())
            progress.update(stop - start)
            del batch
    return out, np.concatenate(logits)


def compute_cams(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: Sequence[int] | None,
    arch: str,
    method: str = "gradcam",
    batch_size: int = 32,
    return_logits: bool = False,
    layer: str | None = None,
    stride: int = 32,
    desc: str | None = None,
    smoothing: Smoothing = Smoothing(),
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Batched CAMs (B,H,W) float32 in [0,1] for class indices (None: predicted class) via the library's CAM context.

    The maps are those of the library's default use (one ``GradCAM(model, target_layers)`` call per
    image) up to float rounding, computed for less: batches of ``batch_size``, a forward pass that
    records no autograd graph below the target layer (parameters are frozen for the call and the
    target layer's output is made a leaf), so the backward pass runs through the head only, and
    channels-last convolutions. ``return_logits`` also returns the model's outputs (B, K) from the
    same forward pass, so a caller that needs predictions does not run the model twice. ``layer``
    and ``stride`` choose the target layer (:func:`target_layers`; by default the family's last block);
    ``method`` is one of :data:`CAM_METHODS`, ``smoothing`` the library's options (:class:`Smoothing`). With ``aug``
    smoothing every variant explains the class predicted for the image itself, and the logits are the image's.
    With ``desc``, the progress is shown (:class:`cxr.ops.progress.Progress`).

    For the duration of the call the model's hooks, ``requires_grad`` flags and memory format
    change; all are restored, as are its train/eval flags and the parameters' ``.grad``. Do not
    use the same model from another thread meanwhile.
    """
    cam_cls = _cam_class(method)
    layers = target_layers(model, arch, layer, stride)
    targets = _checked_targets(images, targets, batch_size)
    n, h, w = int(images.shape[0]), int(images.shape[-2]), int(images.shape[-1])
    if n == 0:
        empty = np.zeros((0, h, w), dtype=np.float32)
        return (empty, np.zeros((0, 0), dtype=np.float32)) if return_logits else empty
    with _prepared_for_cams(model, layers):
        out, logits = _cams_by_batch(model, layers, cam_cls, images, targets, batch_size, smoothing, desc)
    np.nan_to_num(out, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
    np.clip(out, 0.0, 1.0, out=out)
    logger.debug("computed %d %s CAMs (%s) at %dx%d", n, method, arch, h, w)
    return (out, logits) if return_logits else out
