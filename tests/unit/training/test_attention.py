"""The lung-attention loss and the lung masks it reads: the share of the class map outside the lungs, and masks that
move with their images by every augmentation path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr.core.sections import Augment
from cxr.model.networks import build_model
from cxr.training.attention import LungAttention
from cxr.training.dataset import AugmentedImages
from cxr.training.presets import apply_batch, apply_cpu, draw_params, geometric

#: Every step on, so that a mask that followed an intensity step would show it.
MOVING = Augment(rotate_deg=20, shift=0.1, scale=0.2, brightness=0.3, contrast=0.3, gamma=(0.7, 1.3), hflip=0.5, p=1.0)


def _lungs(n: int, size: int) -> np.ndarray:
    """Two lung-like ellipses per image, uint8 0/255, a little different per image."""
    yy, xx = np.mgrid[:size, :size] / size
    out = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        for cx in (0.3 + 0.01 * i, 0.7):
            out[i][((xx - cx) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1] = 255
    return out


def test_the_share_outside_is_the_class_map_weighed_by_the_mask() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", 3).eval()
    with torch.no_grad():
        model.fc.weight.abs_()  # non-negative features, non-negative weights: a map that is nowhere all zero
    x, labels = torch.randn(4, 1, 128, 128), torch.tensor([0, 1, 2, 1])
    lungs = torch.from_numpy(_lungs(4, 128)).unsqueeze(1)
    outside = 255 - lungs
    with LungAttention(model, "resnet18", 2.0) as att:
        model(x)
        share = att.outside_share(labels, outside)
        a = att._features
        cam = torch.relu(torch.einsum("bchw,bc->bhw", a, model.fc.weight[labels]))
        inside = torch.nn.functional.adaptive_avg_pool2d(lungs.float() / 255, a.shape[-2:])[:, 0]
        want = (cam * (1 - inside)).sum((1, 2)) / cam.sum((1, 2))
        assert torch.allclose(share, want, atol=1e-5) and ((share > 0) & (share < 1)).all()
        assert torch.allclose(att.loss(labels, outside), 2.0 * want.mean(), atol=1e-5)
        # Nothing outside (an image without a mask) adds nothing; everything outside puts the whole map there.
        assert torch.equal(att.outside_share(labels, torch.zeros_like(outside)), torch.zeros(4))
        assert torch.allclose(att.outside_share(labels, torch.full_like(outside, 255)), torch.ones(4), atol=1e-4)
    assert not model.layer4._forward_hooks  # the hook is gone after the block


def test_the_loss_moves_the_features_and_the_classifier() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", 3, output_stride=16).train()
    x, labels = torch.randn(4, 1, 64, 64), torch.tensor([0, 1, 2, 1])
    with LungAttention(model, "resnet18", 1.0) as att:
        model(x)
        att.loss(labels, torch.from_numpy(_lungs(4, 64)).unsqueeze(1)).backward()
    assert model.fc.weight.grad.abs().sum() > 0 and model.layer3[0].conv1.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="not one linear layer"):
        LungAttention(build_model("convnext_tiny", 3), "convnext_tiny", 1.0)


def test_a_mask_moves_with_its_image_and_never_with_the_intensity_steps() -> None:
    masks = _lungs(6, 48)
    images = masks.copy()  # an image that is its mask: what moved it shows pixel for pixel
    fast = AugmentedImages(images, np.zeros(6, int), MOVING, masks=masks)
    for index, seed in ((0, 1), (3, 2), (5, 99)):
        image, _label, mask = fast[(index, seed)]
        params = draw_params(MOVING, seed)
        assert np.array_equal(mask[0].numpy(), apply_cpu(masks[index].copy(), geometric(params)))
        assert np.array_equal(image[0].numpy(), apply_cpu(images[index].copy(), params))
        assert not np.array_equal(mask[0].numpy(), masks[index])  # it moved
        assert set(np.unique(mask[0].numpy())) - {0, 255}  # only by the warp's interpolation, not by a table

    # The Compose moves it as Albumentations moves masks (nearest neighbour: the edges may differ by a pixel).
    compose = AugmentedImages(images, np.zeros(6, int), MOVING, path="compose", masks=masks)
    for index, seed in ((0, 1), (3, 2), (5, 99)):
        _image, _label, mask = compose[(index, seed)]
        want = apply_cpu(masks[index].copy(), geometric(draw_params(MOVING, seed))) > 127
        assert ((mask[0].numpy() > 127) == want).mean() > 0.98

    # Deferred to the device, the mask travels unmoved; the batch's geometric parameters move it there.
    device = AugmentedImages(images, np.zeros(6, int), MOVING, path="device", masks=masks)
    _image, _label, params, mask = device[(2, 7)]
    assert torch.equal(mask[0], torch.from_numpy(masks[2]))
    moved = apply_batch(mask.unsqueeze(0), geometric(params.unsqueeze(0)), clahe=False)[0, 0].numpy().astype(int)
    cpu = apply_cpu(masks[2].copy(), geometric(draw_params(MOVING, 7))).astype(int)
    assert (np.abs(moved - cpu) > 3).mean() < 1e-3  # the two warps' rounding, as for images


def test_an_image_without_a_mask_adds_nothing_however_it_is_moved(tmp_path) -> None:
    """What a warp brings in from beyond the edge is padding, not anatomy outside the lungs: 0 in every path."""
    from cxr.training.dataset import outside_lungs

    rows = [{"folder": "COVID", "path": "COVID/images/COVID-1.png"}]
    (tmp_path / "COVID" / "images").mkdir(parents=True)
    outside, found = outside_lungs(rows, tmp_path, 48)  # no COVID/masks/COVID-1.png
    assert found == 0 and not outside.any()
    images = np.full((1, 48, 48), 128, np.uint8)
    for path in ("fast", "compose"):
        ds = AugmentedImages(images, np.zeros(1, int), MOVING, path=path, masks=outside)
        assert not any(ds[(0, seed)][2].any() for seed in range(8)), path
    _image, _label, params, mask = AugmentedImages(images, np.zeros(1, int), MOVING, path="device", masks=outside)[
        (0, 3)
    ]
    assert not apply_batch(mask.unsqueeze(0), geometric(params.unsqueeze(0)), clahe=False).any()
    # With a mask, the padding a shift brings in is not counted outside either.
    moved = apply_cpu(255 - _lungs(1, 48)[0], geometric(draw_params(MOVING, 3)))
    assert moved[0].max() == 0 or moved[:, 0].max() == 0 or moved[-1].max() == 0 or moved[:, -1].max() == 0


def test_masks_must_match_the_images() -> None:
    with pytest.raises(ValueError, match="do not match the images"):
        AugmentedImages(_lungs(4, 32), np.zeros(4, int), MOVING, masks=_lungs(3, 32))


def test_geometric_keeps_the_warp_and_the_flip_only() -> None:
    params = draw_params(MOVING, 5)
    g = geometric(params)
    assert np.array_equal(g[:5], params[:5]) and g[9] == params[9]
    assert tuple(g[5:9]) == (1.0, 0.0, 1.0, 0.0) and tuple(params[5:8]) != (1.0, 0.0, 1.0)
    batch = torch.from_numpy(np.stack([params, params]))
    assert torch.equal(geometric(batch)[0], torch.from_numpy(g)) and torch.equal(batch[0], torch.from_numpy(params))
