"""Batched Grad-CAM (``cxr.evaluation.cam.compute_cams``) vs one image at a time the library's default way, on the CPU.

The baseline is how the reference projects use pytorch-grad-cam: one ``GradCAM(model, target_layers)``
call per image, with the model as trained (parameters requiring grad), so every call runs a forward
pass and a backward pass through the whole network. Ours gives the same maps (checked) in batches,
with no autograd graph below the target layer and channels-last convolutions. To say where the
speed-up comes from, ours at batch 1 and the model's bare batched forward pass (the floor of any CAM
method that needs one forward pass) are timed too.
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

    from cxr.model.preprocess import load_image, to_input

    paths = sorted(src.glob("*/images/*.png"))
    chosen = paths[:: max(1, len(paths) // n)][:n]
    batch = torch.from_numpy(np.stack([load_image(p, px) for p in chosen])).unsqueeze(1)
    return to_input(batch, "cpu"), [i % 4 for i in range(len(chosen))]


def reference_cams(model, x, targets: list[int]) -> np.ndarray:
    """The baseline: the library's GradCAM called once per image, as its README shows."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cxr.evaluation.cam import target_layers

    maps = []
    for i, t in enumerate(targets):
        with GradCAM(model=model, target_layers=target_layers(model, ARCH)) as cam:
            maps.append(cam(input_tensor=x[i : i + 1], targets=[ClassifierOutputTarget(t)]))
    return np.concatenate(maps).astype(np.float32)


def _forward(model, x, batch: int) -> float:
    """Seconds for the bare forward pass over ``x`` in chunks of ``batch`` (no autograd, no CAM library)."""
    import torch

    with timer() as t, torch.no_grad():
        for s in range(0, len(x), batch):
            model(x[s : s + batch])
    return t["s"]


def run(size: str, work: Path) -> Outcome:
    """Run the Grad-CAM benchmark at ``size`` with scratch space under ``work``."""
    import torch

    from cxr.evaluation.cam import compute_cams
    from cxr.model.networks import build_model

    sz = SIZES[size]
    src = synthetic_dataset(work, size)
    x, targets = _images(src, sz["images"], sz["px"])
    n = len(x)
    torch.manual_seed(0)
    model = build_model(ARCH, 4).eval()

    compute_cams(model, x[:2], targets[:2], ARCH, batch_size=2)  # warm-up
    reference_cams(model, x[:2], targets[:2])
    with timer() as t_ref:
        ref = reference_cams(model, x, targets)
    with timer() as t_batched:
        batched = compute_cams(model, x, targets, ARCH, batch_size=sz["batch"])
    with timer() as t_ours_1:
        compute_cams(model, x, targets, ARCH, batch_size=1)
    # The same maps either way, else the comparison is void.
    max_diff = float(np.abs(batched - ref).max())
    if max_diff > 1e-3:
        raise RuntimeError(f"batched maps differ from the library's one-at-a-time maps by {max_diff:.2e}")
    speedup = t_ref["s"] / t_batched["s"]
    t_fwd = _forward(model, x, sz["batch"])

    out = Outcome("gradcam")
    out.rows = [
        Row(
            f"CAMs, ours, batches of {sz['batch']} ({n} images, {sz['px']} px)",
            n / t_batched["s"],
            "img/s",
            n / t_ref["s"],
            speedup,
        ),
        Row("CAMs, library default, one image at a time", n / t_ref["s"], "img/s"),
        Row("CAMs, ours, one image at a time", n / t_ours_1["s"], "img/s", n / t_ref["s"], t_ref["s"] / t_ours_1["s"]),
        Row(
            f"bare forward pass, batches of {sz['batch']}, default memory format",
            n / t_fwd,
            "img/s",
            n / t_batched["s"],
            t_batched["s"] / t_fwd,
        ),
    ]
    out.figures = [Figure("gradcam_batched_speedup", speedup, (">=", 5))]
    out.extra = {
        "gradcam_batched_images_per_s": n / t_batched["s"],
        "gradcam_single_images_per_s": n / t_ref["s"],
        "gradcam_ours_batch1_images_per_s": n / t_ours_1["s"],
        "gradcam_forward_images_per_s": n / t_fwd,
        "gradcam_max_abs_diff": max_diff,
        "gradcam_images": n,
        "gradcam_image_size": sz["px"],
        "gradcam_batch_size": sz["batch"],
    }
    out.notes.append(
        f"same maps (max difference {max_diff:.1e}); of the {speedup:.2f}x, {t_ref['s'] / t_ours_1['s']:.2f}x comes "
        f"from stopping the backward pass at the target layer (ours at batch 1) and the rest from batching and "
        f"channels-last; ours costs {t_batched['s'] / t_fwd:.2f}x a bare batched forward pass "
        "in the default memory format"
    )
    return out
