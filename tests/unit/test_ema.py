"""Weight averaging: the EMA follows the weights at the configured decay, and is off by default."""

from __future__ import annotations

import torch
from torch import nn

from cxr.train import lr_lambda, make_ema


def test_ema_tracks_the_weights_at_its_decay() -> None:
    model = nn.Sequential(nn.Linear(2, 1, bias=False), nn.BatchNorm1d(1))
    assert make_ema(model, None) is None
    ema = make_ema(model, 0.9)
    with torch.no_grad():
        model[0].weight.fill_(0.0)
    ema.update_parameters(model)  # the first update copies
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].running_mean.fill_(1.0)
    ema.update_parameters(model)
    assert torch.allclose(ema.module[0].weight, torch.full((1, 2), 0.1))
    assert torch.allclose(ema.module[1].running_mean, torch.full((1,), 0.1))  # BatchNorm statistics averaged too
    assert model[0].weight.eq(1.0).all()  # the trained weights are untouched


def test_constant_schedule_keeps_the_rate_after_warmup() -> None:
    assert lr_lambda(0, 100, 10, "constant") == lr_lambda(0, 100, 10, "cosine") == 0.1
    assert lr_lambda(99, 100, 10, "constant") == 1.0
    assert lr_lambda(99, 100, 10, "cosine") < 0.01
