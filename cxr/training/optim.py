"""Optimisation parts: seeding, the optimiser, the learning-rate schedule, EMA, mixup and class weights."""

from __future__ import annotations

import math
import os
import random

import numpy as np
import torch
from torch import nn

from cxr.core.sections import Train


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def lr_lambda(step: int, total: int, warmup: int, schedule: str = "cosine") -> float:
    """Linear warm-up then cosine decay to zero (or a constant rate), as a factor of the base rate."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def class_weights(labels: np.ndarray, k: int) -> np.ndarray:
    """Inverse-frequency weights, mean 1 over classes."""
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / k, 0.0)
    return w


def mix_batch(
    x: torch.Tensor, y: torch.Tensor, alpha: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup: the batch blended with a shuffled copy of itself; (mixed images, partners' labels, weight of ``y``)."""
    # max(lam, 1 - lam): each image keeps the larger share, so the loss's first term is its own label.
    lam = float(rng.beta(alpha, alpha))
    lam = max(lam, 1.0 - lam)
    perm = torch.from_numpy(rng.permutation(len(y))).to(y.device)
    return x.mul(lam).add_(x[perm], alpha=1.0 - lam), y[perm], lam


def ema_decay_at(decay: float, updates: int) -> float:
    """The EMA's decay after ``updates`` averaging steps: ``min(decay, (1 + n) / (10 + n))``.

    A fixed decay would keep about ``decay^steps`` of the first step's near-random weights: at 0.99 over a
    short run's 288 steps that is 6%, enough to ruin the average. Warmed up, the average spans about the
    latest tenth of the run until it reaches ``1 / (1 - decay)`` steps: 0.99 is reached after 890 steps, so
    in a 288-step run any decay from 0.97 up gives the same average (the warm-up's own).
    """
    return min(decay, (1.0 + updates) / (10.0 + updates))


def make_ema(model: nn.Module, decay: float | None) -> nn.Module | None:
    """An exponential moving average of the weights and BatchNorm statistics, updated per step; None when off."""
    if decay is None:
        return None
    from torch.optim.swa_utils import AveragedModel

    ema = AveragedModel(model, use_buffers=True)

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], _n_on_device: torch.Tensor) -> None:
        # The step count from the CPU copy: reading the one passed in, on the GPU, would wait for the device.
        weight = 1.0 - ema_decay_at(decay, int(ema.n_averaged))
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):
            torch._foreach_lerp_(averaged, current, weight)
        else:  # integer buffers (BatchNorm's batch count) have no average: the latest
            torch._foreach_copy_(averaged, current)

    ema.multi_avg_fn = update
    return ema


def make_optimizer(model: nn.Module, cfg: Train) -> torch.optim.Optimizer:
    """``train.optimizer``: AdamW, or SGD with Nesterov momentum; the same rate and weight decay for every tensor."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
