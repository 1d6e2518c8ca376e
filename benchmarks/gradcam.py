"""Batched Grad-CAM (``cxr.explain.compute_cams``) vs one image at a time, same model and images, on the CPU.

To say why the speed-up is what it is, two more things are timed: the model's own forward + backward
at batch 1 vs batched (the most batching can give on this machine, CAM library aside) and the cost of
setting up and releasing the library's hooks once (what a one-at-a-time loop pays per image).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.common import Figure, Outcome, Row, synthetic_dataset, timer

ARCH = "resnet18"
SIZES: dict[str, dict[str, int]] = {
    "full": {"images": 64, "px": 160, "batch": 32},
    "tiny": {"images": 4, "px": 64, "batch": 2},
}


def _images(src: Path, n: int, px: int):
    """``n`` synthetic images, normalised model input (n, 1, px, px), and class targets."""
    import torch

    from cxr.data import load_image, to_input

    paths = sorted(src.glob("*/images/*.png"))
    chosen = paths[:: max(1, len(paths) // n)][:n]
    batch = torch.from_numpy(np.stack([load_image(p, px) for p in chosen])).unsqueeze(1)
    return to_input(batch, "cpu"), [i % 4 for i in range(len(chosen))]


def _fwd_bwd(model, x, targets: list[int], batch: int) -> float:
    """Seconds for forward + backward to the input of ``x`` in chunks of ``batch`` (no CAM library)."""
    import torch

    with timer() as t:
        for s in range(0, len(x), batch):
            xb = x[s : s + batch].clone().requires_grad_(True)
            out = model(xb)
            out[torch.arange(len(xb)), torch.tensor(targets[s : s + batch])].sum().backward()
            model.zero_grad(set_to_none=True)
    return t["s"]


def _hook_setup(model, calls: int) -> float:
    """Seconds per construction + release of the library's GradCAM (hooks registered and removed)."""
    from cxr.explain import _cam_class, target_layers

    layers = target_layers(model, ARCH)
    cls = _cam_class("gradcam")
    with timer() as t:
        for _ in range(calls):
            with cls(model=model, target_layers=layers):
                pass
    return t["s"] / calls


def run(size: str, work: Path) -> Outcome:
    """Run the Grad-CAM benchmark at ``size`` with scratch space under ``work``."""
    import torch

    from cxr.explain import compute_cams
    from cxr.models import build_model

    sz = SIZES[size]
    src = synthetic_dataset(work, size)
    x, targets = _images(src, sz["images"], sz["px"])
    n = len(x)
    torch.manual_seed(0)
    model = build_model(ARCH, 4).eval()

    compute_cams(model, x[:2], targets[:2], ARCH, batch_size=2)  # warm-up
    with timer() as t_batched:
        batched = compute_cams(model, x, targets, ARCH, batch_size=sz["batch"])
    with timer() as t_single:
        single = np.concatenate(
            [compute_cams(model, x[i : i + 1], targets[i : i + 1], ARCH, batch_size=1) for i in range(n)]
        )
    # Same maps either way (batching must not change the result), else the comparison is void.
    max_diff = float(np.abs(batched - single).max())
    speedup = t_single["s"] / t_batched["s"]

    t_model_1 = _fwd_bwd(model, x, targets, 1)
    t_model_b = _fwd_bwd(model, x, targets, sz["batch"])
    setup_s = _hook_setup(model, min(n, 32))
    ceiling = t_model_1 / t_model_b

    out = Outcome("gradcam")
    out.rows = [
        Row(f"CAMs, batches of {sz['batch']} ({n} images, {sz['px']} px)", n / t_batched["s"], "img/s",
            n / t_single["s"], speedup),
        Row("CAMs, one image at a time", n / t_single["s"], "img/s"),
        Row("model fwd+bwd only, batched", n / t_model_b, "img/s", n / t_model_1, ceiling),
        Row("model fwd+bwd only, batch 1", n / t_model_1, "img/s"),
        Row("hook set-up + release per call", setup_s * 1000, "ms"),
        Row("one-at-a-time CAM cost beyond fwd+bwd per image", (t_single["s"] - t_model_1) / n * 1000, "ms"),
    ]
    out.figures = [Figure("gradcam_batched_speedup", speedup, (">=", 5))]
    out.extra = {
        "gradcam_batched_images_per_s": n / t_batched["s"],
        "gradcam_single_images_per_s": n / t_single["s"],
        "gradcam_model_batching_speedup": ceiling,
        "gradcam_hook_setup_ms": setup_s * 1000,
        "gradcam_max_abs_diff": max_diff,
        "gradcam_images": n,
        "gradcam_image_size": sz["px"],
        "gradcam_batch_size": sz["batch"],
    }
    out.notes.append(
        f"batched and one-at-a-time maps agree to {max_diff:.1e}; the model's own fwd+bwd gains {ceiling:.2f}x from "
        f"batching on this CPU, which bounds what batched CAMs can gain beyond the per-call set-up "
        f"({setup_s * 1000:.2f} ms a call)"
    )
    return out
