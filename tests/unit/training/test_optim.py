"""Optimisation settings: the EMA follows the weights at the configured decay (off by default), the schedule,
the optimiser; mixup blends each batch with a shuffled copy of itself, reproducibly from its generator."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cxr.core.sections import Train
from cxr.training.optim import ema_decay_at, lr_lambda, make_ema, make_optimizer, mix_batch


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
        model[1].num_batches_tracked.fill_(7)
    ema.update_parameters(model)
    w = 1 - ema_decay_at(0.9, 1)  # 1 - 2/11: early on the average is short
    assert torch.allclose(ema.module[0].weight, torch.full((1, 2), w))
    assert torch.allclose(ema.module[1].running_mean, torch.full((1,), w))  # BatchNorm statistics averaged too
    assert model[0].weight.eq(1.0).all()  # the trained weights are untouched
    assert int(ema.module[1].num_batches_tracked) == 7  # integer buffers: the latest, not a truncated blend


def test_ema_decay_warms_up_to_its_setting() -> None:
    """The first steps' weights fade from the average: after 288 steps (8 short epochs) at 0.99, the first
    step's share is a product of warmed-up decays, far below the 0.99^288 = 6% a fixed decay leaves."""
    assert ema_decay_at(0.99, 0) == 0.1 and ema_decay_at(0.99, 1) == 2 / 11
    assert ema_decay_at(0.99, 10**6) == 0.99 and ema_decay_at(0.5, 10) == 0.5
    share = 1.0
    for n in range(1, 288):
        share *= ema_decay_at(0.99, n)
    assert share < 0.05 * 0.99**288


def test_ema_holds_the_settled_weights() -> None:
    """After many steps at fixed weights the average is those weights, whatever the first ones were."""
    model = nn.Linear(3, 1)
    ema = make_ema(model, 0.99)
    ema.update_parameters(model)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.bias.fill_(-1.0)
    for _ in range(2000):
        ema.update_parameters(model)
    assert torch.allclose(ema.module.weight, model.weight, atol=1e-4)
    assert torch.allclose(ema.module.bias, model.bias, atol=1e-4)


def test_constant_schedule_keeps_the_rate_after_warmup() -> None:
    assert lr_lambda(0, 100, 10, "constant") == lr_lambda(0, 100, 10, "cosine") == 0.1
    assert lr_lambda(99, 100, 10, "constant") == 1.0
    assert lr_lambda(99, 100, 10, "cosine") < 0.01


def test_optimizer_is_adamw_or_nesterov_sgd_with_the_configured_rate() -> None:
    model = nn.Linear(3, 2)
    adamw = make_optimizer(model, Train(lr=1e-3, weight_decay=0.01))
    assert type(adamw) is torch.optim.AdamW
    assert (adamw.defaults["lr"], adamw.defaults["weight_decay"]) == (1e-3, 0.01)
    sgd = make_optimizer(model, Train(optimizer="sgd", lr=0.05, weight_decay=5e-4, momentum=0.9))
    assert type(sgd) is torch.optim.SGD
    assert (sgd.defaults["lr"], sgd.defaults["weight_decay"], sgd.defaults["momentum"]) == (0.05, 5e-4, 0.9)
    assert sgd.defaults["nesterov"]
    assert not make_optimizer(model, Train(optimizer="sgd", momentum=0.0)).defaults["nesterov"]  # needs momentum


def test_mixup_blends_each_image_with_its_partner() -> None:
    x = torch.arange(6, dtype=torch.float32).reshape(6, 1, 1, 1).expand(6, 1, 2, 2).contiguous()
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    mixed, y_mix, lam = mix_batch(x, y, 0.4, np.random.default_rng(3))
    assert 0.5 <= lam <= 1.0  # each image keeps the larger share
    perm = (y_mix.unsqueeze(1) == y.unsqueeze(0)).float()  # the partners' labels come from the batch
    assert perm.sum(1).ge(1).all()
    partner = (mixed[:, 0, 0, 0] - lam * x[:, 0, 0, 0]) / (1 - lam)
    assert torch.allclose(partner.sort().values, x[:, 0, 0, 0].sort().values, atol=1e-4)  # a permutation of the batch
    assert torch.equal(y_mix, y[partner.round().long()])  # each partner's label travels with it
    assert x[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 5]  # the input batch is left as it was


def test_mixup_is_reproducible_from_its_seed() -> None:
    x, y = torch.randn(8, 1, 4, 4), torch.arange(8) % 3
    a = mix_batch(x, y, 0.2, np.random.default_rng([42, 1, 0]))
    b = mix_batch(x, y, 0.2, np.random.default_rng([42, 1, 0]))
    c = mix_batch(x, y, 0.2, np.random.default_rng([42, 2, 0]))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    assert a[2] != c[2]
