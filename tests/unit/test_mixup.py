"""Mixup: each batch is blended with a shuffled copy of itself, reproducibly from its generator."""

from __future__ import annotations

import numpy as np
import torch

from cxr.training.optim import mix_batch


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
