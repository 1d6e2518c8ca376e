"""The served MLflow pyfunc (``cxr.serving.pyfunc``) vs the bare torch model on the same preprocessed images.

A ResNet-18 checkpoint (random weights: speed does not depend on them) is logged the project's way
(``cxr.serving.pyfunc.log_pyfunc`` into a throw-away SQLite tracking store) and loaded back with
``mlflow.pyfunc.load_model``. Inputs are uint8 arrays already at the model's resolution, so both sides
do the same work apart from the wrapper: DataFrame in, normalisation, batching, softmax, DataFrame out.
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Figure, Outcome, Row, synthetic_dataset

CLASSES: list[str] = ["COVID", "Normal", "Lung_Opacity", "Viral Pneumonia"]
SIZES: dict[str, dict[str, int]] = {
    "full": {"px": 224, "batch": 64, "single_calls": 20, "batch_calls": 3},
    "tiny": {"px": 64, "batch": 4, "single_calls": 2, "batch_calls": 1},
}


def _median_s(fn, calls: int) -> float:
    """Median wall-clock seconds of ``calls`` calls of ``fn`` (after one warm-up call)."""
    fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(size: str, work: Path) -> Outcome:
    """Run the pyfunc benchmark at ``size`` with scratch space under ``work``; skipped without cxr.serving.pyfunc."""
    out = Outcome("pyfunc")
    try:
        from cxr.serving import pyfunc as serving
    except ImportError as err:
        out.skipped = f"cxr.serving.pyfunc is not available ({err})"
        return out
    import mlflow
    import torch

    from cxr.model.networks import build_model
    from cxr.model.preprocess import load_image, to_input

    sz = SIZES[size]
    px, n = sz["px"], sz["batch"]
    scratch = work / "pyfunc"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    torch.manual_seed(0)
    model = build_model("resnet18", len(CLASSES)).eval()
    ckpt = scratch / "best.pt"
    torch.save({"model": model.state_dict(), "arch": "resnet18", "classes": CLASSES, "image_size": px}, ckpt)

    src = synthetic_dataset(work, size)
    paths = sorted(src.glob("*/images/*.png"))
    paths = paths[:: max(1, len(paths) // n)][:n]
    images = np.stack([load_image(p, px) for p in paths])

    from cxr.ops.tracking import ensure_experiment

    previous_uri = mlflow.get_tracking_uri()
    uri = f"sqlite:///{scratch / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        # Artifacts beside the throw-away store, not in ./mlruns of whatever folder this runs from.
        with mlflow.start_run(experiment_id=ensure_experiment(mlflow, "bench-pyfunc", scratch, uri)):
            info = serving.log_pyfunc(ckpt, None, name="model")
        loaded = mlflow.pyfunc.load_model(info.model_uri)
    finally:
        mlflow.set_tracking_uri(previous_uri)

    one = serving.to_frame([images[0]])
    batch = serving.to_frame(list(images))
    # As a server receives them: the files' bytes (the served model reads no paths).
    by_bytes = serving.to_frame([p.read_bytes() for p in paths])
    x1 = torch.from_numpy(images[:1]).unsqueeze(1)
    xb = torch.from_numpy(images).unsqueeze(1)

    def bare(x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(model(to_input(x, "cpu")).float(), dim=1).numpy()

    # Same probabilities either way, else the comparison is void (temperature is 1 without calibration).
    got = loaded.predict(batch)[[serving.prob_column(c) for c in CLASSES]].to_numpy()
    max_diff = float(np.abs(got - bare(xb)).max())
    if max_diff > 1e-4:
        raise RuntimeError(f"pyfunc and bare model disagree by {max_diff:.2e}")

    t_py1 = _median_s(lambda: loaded.predict(one), sz["single_calls"])
    t_bare1 = _median_s(lambda: bare(x1), sz["single_calls"])
    t_pyb = _median_s(lambda: loaded.predict(batch), sz["batch_calls"])
    t_bareb = _median_s(lambda: bare(xb), sz["batch_calls"])
    t_bytes = _median_s(lambda: loaded.predict(by_bytes), sz["batch_calls"])
    overhead = t_pyb / t_bareb

    out.rows = [
        Row(f"pyfunc, 1 image ({px} px array)", t_py1 * 1000, "ms", t_bare1 * 1000, t_py1 / t_bare1),
        Row(f"pyfunc, batch of {n} arrays", n / t_pyb, "img/s", n / t_bareb, (n / t_pyb) / (n / t_bareb)),
        Row(
            f"pyfunc, batch of {n} PNG files as bytes (decode included)",
            n / t_bytes,
            "img/s",
            n / t_bareb,
            (n / t_bytes) / (n / t_bareb),
        ),
        Row("bare model, 1 image", t_bare1 * 1000, "ms"),
        Row(f"bare model, batch of {n}", n / t_bareb, "img/s"),
    ]
    out.figures = [Figure("pyfunc_batch_overhead", overhead, ("<", 1.3))]
    out.extra = {
        "pyfunc_single_latency_ms": t_py1 * 1000,
        "pyfunc_bare_single_latency_ms": t_bare1 * 1000,
        "pyfunc_single_overhead": t_py1 / t_bare1,
        "pyfunc_batch_images_per_s": n / t_pyb,
        "pyfunc_bare_batch_images_per_s": n / t_bareb,
        "pyfunc_bytes_images_per_s": n / t_bytes,
        "pyfunc_batch_size": n,
        "pyfunc_image_size": px,
    }
    out.notes.append(
        f"pyfunc_batch_overhead = pyfunc time / bare time for {n} images; the pyfunc runs the model in its "
        f"logged batch size (model_config batch_size, default {serving.DEFAULT_BATCH_SIZE}), the bare model "
        f"in one call; medians of {sz['batch_calls']} calls"
    )
    return out
