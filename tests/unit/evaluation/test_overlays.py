"""Unit tests for cxr.evaluation.overlays (maps drawn over images)."""

from __future__ import annotations

import numpy as np

from cxr.evaluation.overlays import gallery, overlay


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
