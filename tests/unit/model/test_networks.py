"""Models by name: one gray input channel, the right head, fast failure when weights cannot be had."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cxr.model.networks import SUPPORTED_ARCHS, WeightsUnavailable, build_model


@pytest.mark.parametrize("arch", sorted(SUPPORTED_ARCHS))
def test_every_arch_takes_gray_and_gives_k_logits(arch: str) -> None:
    model = build_model(arch, 3).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 3)


def test_gray_stem_equals_rgb_stem_on_replicated_input(tmp_path: Path) -> None:
    import torchvision

    rgb = torchvision.models.resnet18(weights=None).eval()
    weights = tmp_path / "w.pth"
    torch.save(rgb.state_dict(), weights)
    gray = build_model("resnet18", 1000, str(weights)).eval()
    gray.fc.load_state_dict(rgb.fc.state_dict())
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(gray(x), rgb(x.expand(1, 3, 64, 64)), atol=1e-4)


def test_missing_weights_fail_fast_with_advice(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr("cxr.model.networks._hub_reachable", lambda url, timeout_s: False)
    with pytest.raises(WeightsUnavailable, match="weights: null"):
        build_model("resnet18", 4, "DEFAULT")
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        build_model("resnet18", 4, str(tmp_path / "nope.pth"))
    with pytest.raises(WeightsUnavailable, match="not a weights name"):
        build_model("resnet18", 4, "IMAGENET9K")


def test_unknown_arch() -> None:
    with pytest.raises(ValueError, match="vgg11"):
        build_model("vgg11", 4)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_output_stride_16_keeps_the_last_stage_at_the_previous_resolution(arch: str) -> None:
    from cxr.model.networks import resnet_stage_strides

    coarse, fine = build_model(arch, 3), build_model(arch, 3, output_stride=16)
    assert resnet_stage_strides(coarse) == {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
    assert resnet_stage_strides(fine) == {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 16}
    # The same weights fit both (a checkpoint or ImageNet weights load either way); only the map is finer.
    fine.load_state_dict(coarse.state_dict())
    seen = []
    fine.layer4.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[-2:])))
    with torch.no_grad():
        assert fine.eval()(torch.zeros(1, 1, 128, 128)).shape == (1, 3)
    assert seen == [(8, 8)]
    with pytest.raises(ValueError, match="resnet"):
        build_model("densenet121", 3, output_stride=16)


def test_a_checkpoint_loads_at_the_output_stride_it_was_trained_at(tmp_path: Path) -> None:
    from cxr.model.inference import load_trained

    model = build_model("resnet18", 3, output_stride=16)
    state = {"model": model.state_dict(), "arch": "resnet18", "classes": ["a", "b", "c"], "image_size": 64}
    torch.save({**state, "params": {"output_stride": 16}}, tmp_path / "fine.pt")
    torch.save(state, tmp_path / "old.pt")  # written before the setting existed: stride 32
    fine, _ = load_trained(tmp_path / "fine.pt")
    old, _ = load_trained(tmp_path / "old.pt")
    assert fine.layer4[0].conv1.stride == (1, 1) and old.layer4[0].conv1.stride == (2, 2)
