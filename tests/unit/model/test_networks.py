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
