"""Unit tests for cxr.evaluation.cam (Grad-CAM wrappers and localisation scores)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytest.importorskip("pytorch_grad_cam")

# After the skips, which name what is missing.
from cxr.evaluation.cam import compute_cams, target_layers  # noqa: E402
from cxr.evaluation.localisation import energy_inside, iou_at_top, pointing_game  # noqa: E402
from cxr.evaluation.overlays import gallery, overlay  # noqa: E402

SIZE = 64


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    """Tiny-input torchvision models with random weights, one per family tested."""
    torch.manual_seed(0)
    return {
        "resnet18": torchvision.models.resnet18(weights=None, num_classes=4),
        "densenet121": torchvision.models.densenet121(weights=None, num_classes=4),
    }


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Three random 64x64 RGB images."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 3, SIZE, SIZE, generator=g)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("arch", ["resnet18", "densenet121"])
@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "eigencam"])
def test_compute_cams(models, images, method, arch, batch) -> None:
    model = models[arch]
    training = batch == 3  # exercise restoring both modes
    model.train(training)
    x = images[:batch]
    before = x.clone()
    cams = compute_cams(model, x, targets=[i % 4 for i in range(batch)], arch=arch, method=method, batch_size=2)
    assert cams.shape == (batch, SIZE, SIZE)
    assert cams.dtype == np.float32
    assert np.isfinite(cams).all()
    assert cams.min() >= 0.0 and cams.max() <= 1.0
    assert torch.equal(x, before)
    assert not x.requires_grad
    assert model.training is training
    assert all(m.training is training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.is_contiguous() for p in model.parameters())


@pytest.mark.parametrize("arch", ["resnet18", "densenet121"])
@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "eigencam"])
def test_batched_maps_are_the_librarys_one_image_at_a_time(models, images, method, arch) -> None:
    """Frozen parameters, a leaf at the target layer and channels-last change the cost, not the maps."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cxr.evaluation.cam import _cam_class

    model = models[arch].eval()
    targets = [2, 0, 3]
    reference = []
    for i, t in enumerate(targets):  # the library's default use, as the reference projects call it
        with _cam_class(method)(model=model, target_layers=target_layers(model, arch)) as cam:
            reference.append(cam(input_tensor=images[i : i + 1], targets=[ClassifierOutputTarget(t)]))
    reference = np.concatenate(reference)
    cams, logits = compute_cams(model, images, targets, arch, method, batch_size=3, return_logits=True)
    np.testing.assert_allclose(cams, reference, atol=2e-4)
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(images).numpy(), rtol=1e-4, atol=1e-4)


def test_compute_cams_default_targets_and_no_grad_context(models, images) -> None:
    model = models["resnet18"].eval()
    with torch.no_grad():
        cams = compute_cams(model, images, targets=None, arch="resnet18")
        predicted = model(images).argmax(1).tolist()
    assert cams.shape == (3, SIZE, SIZE)
    np.testing.assert_allclose(cams, compute_cams(model, images, predicted, arch="resnet18"), atol=1e-5)
    with pytest.raises(ValueError):  # the library swallows IndexError; we must not return garbage
        compute_cams(model, images[:1], [7], arch="resnet18")


def test_unknown_arch_and_method(models, images) -> None:
    with pytest.raises(ValueError, match="vit_b_16"):
        target_layers(models["resnet18"], "vit_b_16")
    with pytest.raises(ValueError, match="vit_b_16"):
        compute_cams(models["resnet18"], images[:1], [0], arch="vit_b_16")
    with pytest.raises(ValueError, match="scorecam"):
        compute_cams(models["resnet18"], images[:1], [0], arch="resnet18", method="scorecam")
    with pytest.raises(ValueError):
        compute_cams(models["resnet18"], images[:2], [0], arch="resnet18")


def test_target_layers_families(models) -> None:
    assert target_layers(models["resnet18"], "resnet18") == [models["resnet18"].layer4[-1]]
    assert target_layers(models["densenet121"], "densenet121") == [models["densenet121"].features[-1]]


@pytest.mark.parametrize("arch", ["resnet50", "densenet121", "efficientnet_b0", "convnext_tiny"])
def test_stride_picks_the_last_stage_at_that_stride_in_every_family(arch: str) -> None:
    model = torchvision.models.get_model(arch, weights=None, num_classes=4).eval()
    seen = {}
    for stride in (8, 16, 32):
        (layer,) = target_layers(model, arch, stride=stride)
        handle = layer.register_forward_hook(lambda m, i, o, s=stride: seen.__setitem__(s, tuple(o.shape[-2:])))
        with torch.no_grad():
            model(torch.zeros(1, 3, 128, 128))
        handle.remove()
    assert seen == {8: (16, 16), 16: (8, 8), 32: (4, 4)}
    assert target_layers(model, arch) == target_layers(model, arch, stride=32)
    with pytest.raises(ValueError, match="stride"):
        target_layers(model, arch, stride=4)


def test_a_named_target_layer_gives_a_finer_map(models, images) -> None:
    resnet = models["resnet18"]
    assert target_layers(resnet, "resnet18", "layer2") == [resnet.layer2]
    assert target_layers(resnet, "resnet18", "layer3.1.conv2") == [resnet.layer3[1].conv2]
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    resnet.eval()
    fine = compute_cams(resnet, images[:2], [0, 1], arch="resnet18", layer="layer2")
    with GradCAM(model=resnet, target_layers=[resnet.layer2]) as cam:
        reference = cam(input_tensor=images[:2], targets=[ClassifierOutputTarget(0), ClassifierOutputTarget(1)])
    np.testing.assert_allclose(fine, reference, atol=2e-4)
    assert not np.allclose(fine, compute_cams(resnet, images[:2], [0, 1], arch="resnet18"), atol=0.05)
    with pytest.raises(ValueError, match="gradcam.target_layer 'layer9'.*layer4"):
        target_layers(resnet, "resnet18", "layer9")


def _square_mask(h: int = 10, w: int = 10) -> np.ndarray:
    """A 10x10 mask with a 4x4 square of ones at rows/cols 2..5."""
    m = np.zeros((h, w), dtype=np.uint8)
    m[2:6, 2:6] = 1
    return m


def test_energy_and_pointing_known_answers() -> None:
    mask = _square_mask()
    inside = np.zeros((10, 10))
    inside[3, 3] = 1.0
    outside = np.zeros((10, 10))
    outside[8, 8] = 1.0
    half = np.zeros((10, 10))
    half[3, 3] = 1.0
    half[8, 8] = 1.0
    uniform = np.ones((10, 10))
    cams = np.stack([inside, outside, half, uniform, inside])
    masks = np.stack([mask, mask, mask, mask, np.zeros_like(mask)])
    e = energy_inside(cams, masks)
    np.testing.assert_allclose(e[:4], [1.0, 0.0, 0.5, 16 / 100])
    assert np.isnan(e[4])
    pg = pointing_game(cams, masks)
    np.testing.assert_array_equal(pg[:3], [1.0, 0.0, 1.0])
    assert np.isnan(pg[4])
    # tolerance: argmax at (7, 3) is 2 px below the mask's last row (5)
    near = np.zeros((1, 10, 10))
    near[0, 7, 3] = 1.0
    assert pointing_game(near, mask[None])[0] == 0.0
    assert pointing_game(near, mask[None], tolerance_px=2)[0] == 1.0


def test_masks_resized_to_cam() -> None:
    mask = np.kron(_square_mask(), np.ones((4, 4), dtype=np.uint8))  # 40x40 version of the same mask
    cam = np.zeros((1, 10, 10))
    cam[0, 3, 3] = 1.0
    assert energy_inside(cam, mask[None])[0] == pytest.approx(1.0)
    assert pointing_game(cam, mask[None])[0] == 1.0


def test_bump_inside_mask() -> None:
    h = w = 64
    yy, xx = np.mgrid[:h, :w]
    mask = ((yy - 40) ** 2 + (xx - 24) ** 2 <= 15**2).astype(np.uint8)
    cam = np.exp(-((yy - 40) ** 2 + (xx - 24) ** 2) / (2 * 4.0**2))
    assert pointing_game(cam[None], mask[None])[0] == 1.0
    assert energy_inside(cam[None], mask[None])[0] > 0.8
    assert iou_at_top(cam[None], mask[None], quantile=0.9)[0] > 0.4


def test_iou_at_top_known() -> None:
    mask = _square_mask()
    cam = mask.astype(float) + 0.01 * np.random.default_rng(0).random((10, 10)) * (1 - mask)
    # top 16% (quantile 0.84) of the CAM is exactly the 16-pixel square
    assert iou_at_top(cam[None], mask[None], quantile=0.84)[0] == pytest.approx(1.0)
    assert np.isnan(iou_at_top(cam[None], np.zeros((1, 10, 10)))[0])


def test_overlay_and_gallery(tmp_path) -> None:
    gray = (np.random.default_rng(0).random((48, 40)) * 255).astype(np.uint8)
    cam = np.random.default_rng(1).random((6, 5)).astype(np.float32)
    out = overlay(gray, cam)
    assert out.shape == (48, 40, 3) and out.dtype == np.uint8
    rgb = np.stack([gray] * 3, axis=-1)
    assert overlay(rgb, cam, alpha=0.0).tolist() == rgb.tolist()
    fig = gallery([gray, rgb, gray], [cam, cam, cam], ["a", "b", "c"], ncols=2)
    path = tmp_path / "gallery.png"
    fig.savefig(path, dpi=60)
    assert path.exists() and path.stat().st_size > 1024


def test_cam_figure_draws_the_image_pixel_for_pixel_with_a_colour_bar_and_the_label() -> None:
    from cxr.evaluation.overlays import cam_figure, overlay

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (173, 211), dtype=np.uint8)  # not square, not the model's size
    cam = rng.random((16, 16)).astype(np.float32)
    fig = cam_figure(image, cam, "predicted COVID (p = 0.93)")
    import io

    import cv2

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)  # as cxr predict saves it
    rendered = cv2.cvtColor(cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    height, width = rendered.shape[:2]
    box = fig.axes[0].get_position()
    x0, x1, y0, y1 = (round(v) for v in (box.x0 * width, box.x1 * width, box.y0 * height, box.y1 * height))
    region = rendered[height - y1 : height - y0, x0:x1]
    assert region.shape == (173, 211, 3)
    np.testing.assert_array_equal(region, overlay(image, cam))
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "Grad-CAM (normalised)"
    assert [t.get_text() for t in fig.texts] == ["predicted COVID (p = 0.93)"]
