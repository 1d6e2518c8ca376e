"""Unit tests for cxr.evaluation.cam (the Grad-CAM wrappers: layers, methods, batches)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytest.importorskip("pytorch_grad_cam")

# After the skips, which name what is missing.
from cxr.core.sections import CAM_METHODS as METHODS  # noqa: E402
from cxr.evaluation.cam import Smoothing, compute_cams, target_layers  # noqa: E402

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
@pytest.mark.parametrize("method", METHODS)
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
@pytest.mark.parametrize("method", METHODS)
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


def test_every_method_the_settings_accept_is_computed() -> None:
    from typing import get_args

    from cxr.core.sections import GradCam

    assert set(get_args(GradCam.model_fields["method"].annotation)) == set(METHODS)


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_smoothing_is_the_librarys_and_explains_the_images_own_prediction(models, images, method) -> None:
    """``aug``: the library's mean over flipped and rescaled copies, each explaining the class predicted for the image
    itself (left to itself, the library would explain each copy's own prediction); the logits are the image's.
    ``eigen``: the library's principal component of the weighted activations."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cxr.evaluation.cam import _cam_class

    model = models["resnet18"].eval()
    with torch.no_grad():
        logits = model(images)
    predicted = logits.argmax(1).tolist()
    for smoothing in (Smoothing(aug=True), Smoothing(eigen=True), Smoothing(aug=True, eigen=True)):
        cams, got = compute_cams(
            model, images, None, "resnet18", method, batch_size=2, return_logits=True, smoothing=smoothing
        )
        with _cam_class(method)(model=model, target_layers=target_layers(model, "resnet18")) as cam:
            reference = cam(
                input_tensor=images,
                targets=[ClassifierOutputTarget(t) for t in predicted],
                aug_smooth=smoothing.aug,
                eigen_smooth=smoothing.eigen,
            )
        np.testing.assert_allclose(cams, np.clip(reference, 0, 1), atol=2e-4)
        np.testing.assert_allclose(got, logits.numpy(), rtol=1e-4, atol=1e-4)
    plain = compute_cams(model, images, None, "resnet18", method)
    assert not np.allclose(plain, compute_cams(model, images, None, "resnet18", method, smoothing=Smoothing(aug=True)))


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


def test_a_resnet_trained_at_output_stride_16_is_explained_at_its_last_stage() -> None:
    """``train.output_stride`` 16: layer4 is at stride 16, so stride 16 reads it (8 x 8 at 128 px), not layer3."""
    from cxr.model.networks import build_model

    model = build_model("resnet18", 4, output_stride=16).eval()
    assert target_layers(model, "resnet18", stride=16) == [model.layer4[-1]]
    assert target_layers(model, "resnet18", stride=32) == [model.layer4[-1]]  # the last block, as ever
    assert target_layers(model, "resnet18", stride=8) == [model.layer2]
    maps = compute_cams(model, torch.randn(2, 1, 128, 128), [0, 1], arch="resnet18", stride=16)
    assert maps.shape == (2, 128, 128)
