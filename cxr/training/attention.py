"""The lung-attention loss: how much of the true class's activation map a model puts outside the lungs.

For a classifier that is one linear layer on pooled features, the class activation map of class ``c`` is
``ReLU(sum_k w[c, k] * A_k)`` over the last block's channels ``A_k`` (what Grad-CAM computes there, up to a
constant, without a second backward pass). The loss is the share of that map's mass outside the image's lung
mask (the part of each map cell outside the lungs), added to the cross-entropy with the weight
``train.lung_attention``: a model that decides from the ribs, the heart's edge or a corner label pays for it.
Images without a mask come with nothing marked outside and add nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from cxr.model.networks import pooled_features

#: Keeps the share defined for a map that is zero everywhere (a ReLU that cut every cell).
_EPS = 1e-6


class LungAttention:
    """Reads the last block's activations during the forward pass; ``loss`` turns them into the outside share.

    Use as a context manager around training: the forward hook is removed on leaving.
    """

    def __init__(self, model: nn.Module, arch: str, weight: float) -> None:
        self.module, self.head, self.relu = pooled_features(model, arch)
        self.weight = float(weight)
        self._features: torch.Tensor | None = None
        self._hook = self.module.register_forward_hook(self._keep)

    def _keep(self, _module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        self._features = output

    def __enter__(self) -> LungAttention:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._hook.remove()
        self._features = None

    def outside_share(self, labels: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
        """Per image of the last forward pass, the share of its true class's map on ``outside`` (uint8
        (B, 1, H, W), 255 outside the lungs: ``cxr.training.dataset.outside_lungs``, moved with the image)."""
        if self._features is None:
            raise RuntimeError("LungAttention.outside_share before a forward pass through the model")
        a = self._features.float()
        if self.relu:
            a = torch.relu(a)
        w = self.head.weight.float()[labels]  # (B, C)
        cam = torch.relu(torch.einsum("bchw,bc->bhw", a, w))
        cells = nn.functional.adaptive_avg_pool2d(outside.to(a.device, torch.float32) / 255.0, cam.shape[-2:])[:, 0]
        return (cam * cells).sum((1, 2)) / (cam.sum((1, 2)) + _EPS)

    def loss(self, labels: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
        """``weight`` times the mean :meth:`outside_share` of the batch."""
        return self.weight * self.outside_share(labels, outside).mean()
