"""Training on one GPU: ``cxr.training.loop.train`` end to end against the model alone on ready GPU tensors
(the ceiling).

Full size: the synthetic dataset at the real one's size (21,165 images at 299 px, generated here), 224 px,
batch 256, ``params.yaml``'s training settings otherwise (bf16 autocast, channels-last), one DataLoader
worker per core. In the same run:

- ResNet-18 and ResNet-50: the ceiling (forward, backward and optimiser step, as ``train_one_epoch``
  does them, on batches already normalised on the GPU) and ``cxr.training.loop.train`` with augmentation on
  the device and in the loader workers (``train.augment_backend``), per epoch;
- ResNet-18 with ``train.compile`` and with ``train.deterministic: false`` (the cuDNN autotuner);
- the reference notebook's style: PIL and torchvision transforms per image, batch 16, fp32, no workers;
- Grad-CAM: ``cxr.evaluation.cam.compute_cams`` in batches against the library's call per image;
- GPU utilisation (``torch.cuda.utilization``, else ``nvidia-smi``) while training, and the device name.

Without CUDA it measures nothing and says so. ``BENCH_GPU_ON_CPU=1`` runs the same code on the CPU
(use ``--size tiny``): a dry run of the benchmark's logic, whose figures mean nothing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np

from benchmarks.common import Figure, Outcome, Row, synthetic_dataset, timer
from cxr.training.dataset import AugmentedImages

CLASSES: tuple[str, ...] = ("COVID", "Normal", "Lung_Opacity", "Viral Pneumonia")
ARCHS: tuple[str, ...] = ("resnet18", "resnet50")
SIZES: dict[str, dict[str, int]] = {
    "full": {
        "px": 224,
        "batch": 256,
        "epochs": 3,
        "valid": 400,
        "ceiling_steps": 60,
        "warmup_steps": 15,
        "ref_images": 2400,
        "ref_batch": 16,
        "cam_images": 256,
        "cam_batch": 64,
    },
    "tiny": {
        "px": 64,
        "batch": 8,
        "epochs": 2,
        "valid": 8,
        "ceiling_steps": 2,
        "warmup_steps": 1,
        "ref_images": 16,
        "ref_batch": 8,
        "cam_images": 4,
        "cam_batch": 2,
    },
}
ON_CPU_ENV = "BENCH_GPU_ON_CPU"


def _device():
    """The CUDA device, the CPU when the dry run is asked for, else None."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get(ON_CPU_ENV) == "1":
        return torch.device("cpu")
    return None


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _project(work: Path, size: str, valid: int):
    """The synthetic dataset and a train/valid manifest over it; returns (source folder, manifest path)."""
    from cxr.data.manifest import write_manifest

    src = synthetic_dataset(work, size)
    root = work / f"gpu-{size}"
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        files = [(c, p) for c in CLASSES for p in sorted((src / c / "images").glob("*.png"))]
        every = max(2, len(files) // valid)
        rows = []
        for i, (c, p) in enumerate(files):
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            rows.append(
                {
                    "path": p.relative_to(src).as_posix(),
                    "folder": c,
                    "label": c,
                    "split": "valid" if i % every == 0 else "train",
                    "sha256": digest,
                    "group": digest[:12],
                    "source": "synthetic",
                }
            )
        write_manifest(rows, manifest)
    return src, manifest


def _paths(root: Path, src: Path, manifest: Path, run: str):
    """Resolved paths of one training run: shared data and cache, its own checkpoints and reports."""
    from cxr.core.paths import Paths

    return Paths(
        raw=str(src),
        cache=str(root / "cache"),
        manifest=str(manifest),
        model_dir=f"runs/{run}/models",
        train_reports=f"runs/{run}/reports",
    ).resolve(root)


class Utilisation:
    """Samples the GPU's utilisation (percent) in a thread while the block runs; ``mean`` is None when unreadable."""

    def __init__(self, device, every_s: float = 0.5) -> None:
        self.device, self.every_s, self.samples = device, every_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _read(self) -> float | None:
        import torch

        try:
            return float(torch.cuda.utilization(self.device))
        except Exception:  # no nvidia-ml-py: ask nvidia-smi
            pass
        try:
            out = subprocess.run(
                [
                    "nvidia-smi",
                    "--query-gpu=utilization.gpu",
                    "--format=csv,noheader,nounits",
                    "-i",
                    str(self.device.index or 0),
                ],
                capture_output=True,
                text=True,
                timeout=5,
            )
            return float(out.stdout.strip().splitlines()[0])
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            v = self._read()
            if v is None:
                return
            self.samples.append(v)

    def __enter__(self) -> Utilisation:
        if self.device.type == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def mean(self) -> float | None:
        """Mean utilisation over the samples, percent."""
        return float(np.mean(self.samples)) if self.samples else None


def _torch_defaults() -> None:
    """Undo what an earlier run in this process set (cxr.training.optim.seed_everything sets process-wide flags)."""
    import torch

    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = False


def ceiling(arch: str, cfg, device, px: int, batch: int, steps: int, warmup: int) -> tuple[float, float]:
    """Images/s of forward + backward + step on ready normalised batches, as ``train_one_epoch`` runs them.

    Also returns the extra seconds the first ``warmup`` steps took over steady ones (kernel loading,
    allocator growth): part of any first epoch.
    """
    import torch
    from torch import nn

    from cxr.model.inference import autocast as _autocast
    from cxr.model.networks import build_model
    from cxr.training.optim import seed_everything

    _torch_defaults()
    seed_everything(0, cfg.deterministic)  # the same cuDNN flags as the training run
    # The training run's network: its output stride (a ResNet's last stage at 16 costs about 1.6x the compute).
    model = build_model(arch, len(CLASSES), output_stride=cfg.output_stride).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    criterion = nn.CrossEntropyLoss()
    gen = torch.Generator(device="cpu").manual_seed(0)
    batches = []
    for _ in range(4):
        x = torch.randn(batch, 1, px, px, generator=gen).to(device)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        batches.append((x, torch.randint(0, len(CLASSES), (batch,), generator=gen).to(device)))

    def step(i: int) -> None:
        x, y = batches[i % len(batches)]
        with _autocast(device, cfg.amp):
            loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()

    with timer() as t_warm:
        for i in range(warmup):
            step(i)
        _sync(device)
    with timer() as t:
        for i in range(steps):
            step(i)
        _sync(device)
    model = optimizer = batches = None  # frees the device memory before the next measurement
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return steps * batch / t["s"], max(0.0, t_warm["s"] - warmup * t["s"] / steps)


def loader_start(paths, cfg, seed: int, device) -> float:
    """Seconds from a fresh training loader (as ``cxr.training.loop.train`` builds it) to its first batch."""
    from torch.utils.data import DataLoader

    from cxr.data.manifest import read_manifest
    from cxr.model.cache import decoded_cache
    from cxr.training.dataset import SeededSampler
    from cxr.training.presets import choose_path

    train_m = read_manifest(paths.manifest).select("train")
    images = decoded_cache(train_m, paths.raw, paths.cache, cfg.image_size, workers=max(1, cfg.num_workers))
    labels = train_m.labels(CLASSES)
    loader = DataLoader(
        AugmentedImages(images, labels, cfg.augment, choose_path(cfg.augment, cfg.augment_backend, device).name),
        batch_size=cfg.batch_size,
        sampler=SeededSampler(len(labels), seed),
        drop_last=True,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
        prefetch_factor=4 if cfg.num_workers > 0 else None,
    )
    with timer() as t:
        next(iter(loader))
    del loader
    return t["s"]


def end_to_end(cfg, base, paths, device) -> dict:
    """``cxr.training.loop.train`` from scratch; per-epoch images/s, wall seconds and GPU utilisation."""
    import csv

    from cxr.training.loop import train

    shutil.rmtree(paths.model_dir, ignore_errors=True)
    _torch_defaults()
    with Utilisation(device) as util, timer() as t:
        result = train(cfg, base, paths, resume=False)
    paths.last_checkpoint.unlink()  # the resume state (four times the weights): a benchmark run never resumes
    with paths.history.open() as fh:
        history = list(csv.DictReader(fh))
    speeds = [float(r["images_per_s"]) for r in history]
    seconds = [float(r["seconds"]) for r in history]
    steady = float(np.mean(speeds[1:])) if len(speeds) > 1 else speeds[0]
    first_extra = seconds[0] - float(np.mean(seconds[1:])) if len(seconds) > 1 else 0.0
    return {
        "epochs": speeds,
        "first": speeds[0],
        "steady": steady,
        "wall_s": t["s"],
        "util": util.mean,
        "first_extra_s": first_extra,
        "val_accuracy": result.best_score,
    }


def reference_style(src: Path, manifest_rows, device, px: int, batch: int, n: int, lr: float) -> float:
    """Images/s of the reference notebook's loop: PIL + torchvision per image, batch 16, fp32, no workers."""
    import torch
    from torch import nn

    from benchmarks.reference import reference_loader
    from cxr.model.networks import build_model

    _torch_defaults()  # the notebook's: no cuDNN autotuner, no deterministic algorithms
    rows = [r for r in manifest_rows if r["split"] == "train"]
    rows = rows[:: max(1, len(rows) // n)][:n]
    paths = [src / r["path"] for r in rows]
    labels = np.array([CLASSES.index(r["label"]) for r in rows], dtype=np.int64)
    torch.manual_seed(0)
    model = build_model("resnet18", len(CLASSES)).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    criterion = nn.CrossEntropyLoss()
    seen = 0
    with timer() as t:
        for x, y in reference_loader(paths, labels, px, batch):
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            seen += len(x)
        _sync(device)
    return seen / t["s"]


def gradcam(src: Path, device, px: int, n: int, batch: int) -> tuple[float, float, float]:
    """(batched images/s, per-image library images/s, max map difference) of Grad-CAM on ResNet-18."""
    import torch

    from benchmarks.gradcam import ARCH, _images, reference_cams
    from cxr.evaluation.cam import compute_cams
    from cxr.model.networks import build_model

    _torch_defaults()
    x, targets = _images(src, n, px)
    x = x.to(device)
    torch.manual_seed(0)
    model = build_model(ARCH, len(CLASSES)).to(device).eval()
    compute_cams(model, x[:2], targets[:2], ARCH, batch_size=2)  # warm-up
    reference_cams(model, x[:2], targets[:2])
    _sync(device)
    with timer() as t_ref:
        ref = reference_cams(model, x, targets)
        _sync(device)
    with timer() as t_ours:
        ours = compute_cams(model, x, targets, ARCH, batch_size=batch)
        _sync(device)
    return len(x) / t_ours["s"], len(x) / t_ref["s"], float(np.abs(ours - ref).max())


def run(size: str, work: Path) -> Outcome:
    """Run the GPU benchmark at ``size`` with scratch space under ``work``."""
    import torch

    from benchmarks.common import REPO
    from cxr.core.config import load_settings
    from cxr.data.manifest import read_manifest

    out = Outcome("gpu")
    device = _device()
    if device is None:
        out.skipped = (
            f"no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda}): nothing "
            f"measured or recorded; run `python -m benchmarks gpu` on a GPU machine "
            f"({ON_CPU_ENV}=1 with --size tiny dry-runs it on the CPU)"
        )
        return out
    if device.type == "cpu" and size != "tiny":
        out.skipped = f"{ON_CPU_ENV}=1 is a dry run of the logic: use --size tiny; nothing measured or recorded"
        return out
    sz = SIZES[size]
    workers = os.cpu_count() or 1
    src, manifest = _project(work, size, sz["valid"])
    root = manifest.parent
    settings = load_settings(REPO / "params.yaml")
    base = settings.base
    common = {
        "image_size": sz["px"],
        "batch_size": sz["batch"],
        "epochs": sz["epochs"],
        "weights": None,
        "num_workers": workers if device.type == "cuda" else min(workers, 1),
        "device": device.type,
        "patience": None,
    }
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"

    results: dict[str, dict] = {}
    ceilings: dict[str, float] = {}
    warmups: dict[str, float] = {}
    for arch in ARCHS:
        cfg = settings.train.model_copy(update={**common, "arch": arch, "augment_backend": "device"})
        ceilings[arch], warmups[arch] = ceiling(
            arch, cfg, device, sz["px"], sz["batch"], sz["ceiling_steps"], sz["warmup_steps"]
        )
        for backend in ("device", "cpu"):
            run_cfg = cfg.model_copy(update={"augment_backend": backend})
            results[f"{arch}_{backend}"] = end_to_end(
                run_cfg, base, _paths(root, src, manifest, f"{arch}-{backend}"), device
            )
    r18 = settings.train.model_copy(update={**common, "arch": "resnet18", "augment_backend": "device"})
    if device.type == "cuda":  # Inductor on the CPU would spend the dry run compiling
        results["resnet18_compile"] = end_to_end(
            r18.model_copy(update={"compile": True}), base, _paths(root, src, manifest, "resnet18-compile"), device
        )
    results["resnet18_autotune"] = end_to_end(
        r18.model_copy(update={"deterministic": False}), base, _paths(root, src, manifest, "resnet18-autotune"), device
    )
    starts = {
        b: loader_start(
            _paths(root, src, manifest, "resnet18-device"),
            r18.model_copy(update={"augment_backend": b}),
            base.seed,
            device,
        )
        for b in ("device", "cpu")
    }
    rows = read_manifest(manifest).rows
    ref_ips = reference_style(src, rows, device, sz["px"], sz["ref_batch"], sz["ref_images"], settings.train.lr)
    cam_ours, cam_ref, cam_diff = gradcam(src, device, sz["px"], sz["cam_images"], sz["cam_batch"])

    r18d, r50d = results["resnet18_device"], results["resnet50_device"]
    out.rows = [Row(f"device: {name}; {workers} CPU cores", float(workers), "cores")]
    for arch in ARCHS:
        c = ceilings[arch]
        out.rows.append(
            Row(f"{arch} {sz['px']} px: ceiling (model alone, ready tensors, batch {sz['batch']})", c, "img/s")
        )
        for backend in ("device", "cpu"):
            r = results[f"{arch}_{backend}"]
            out.rows.append(
                Row(
                    f"{arch}: cxr.training.loop.train, augmentation on {backend}, epochs 2+",
                    r["steady"],
                    "img/s",
                    c,
                    r["steady"] / c,
                )
            )
            out.rows.append(
                Row(f"{arch}: same, first epoch", r["first"], "img/s", r["steady"], r["first"] / r["steady"])
            )
    variants = (("resnet18_compile", "train.compile: true"), ("resnet18_autotune", "train.deterministic: false"))
    for key, label in variants:
        if key not in results:
            continue
        r = results[key]
        out.rows.append(
            Row(
                f"resnet18: {label}, epochs 2+ (first epoch {r['first']:,.0f})",
                r["steady"],
                "img/s",
                r18d["steady"],
                r["steady"] / r18d["steady"],
            )
        )
    out.rows += [
        Row(f"reference style: PIL + torchvision, batch {sz['ref_batch']}, fp32, no workers", ref_ips, "img/s"),
        Row(
            "resnet18 end to end (device path) against the reference style",
            r18d["steady"],
            "img/s",
            ref_ips,
            r18d["steady"] / ref_ips,
        ),
        Row(f"Grad-CAM, ours in batches of {sz['cam_batch']}", cam_ours, "img/s", cam_ref, cam_ours / cam_ref),
        Row("Grad-CAM, library call per image", cam_ref, "img/s"),
    ]
    for b, secs in starts.items():
        out.rows.append(
            Row(f"first batch of a fresh loader ({common['num_workers']} workers, augmentation on {b})", secs, "s")
        )
    for arch in ARCHS:
        out.rows.append(
            Row(f"{arch}: first {sz['warmup_steps']} steps' extra time (kernel loading, allocator)", warmups[arch], "s")
        )
    if r18d["util"] is not None:
        out.rows.append(Row("GPU utilisation, resnet18 device path (whole run)", r18d["util"], "%"))
        out.rows.append(
            Row("GPU utilisation, resnet18 loader path (whole run)", results["resnet18_cpu"]["util"] or 0.0, "%")
        )
    out.figures = [
        Figure("gpu_resnet18_224_images_per_s", r18d["steady"]),
        Figure("gpu_resnet18_224_ceiling_images_per_s", ceilings["resnet18"]),
        Figure("gpu_resnet18_224_fraction_of_ceiling", r18d["steady"] / ceilings["resnet18"], (">=", 0.90)),
        Figure("gpu_resnet50_224_fraction_of_ceiling", r50d["steady"] / ceilings["resnet50"], (">=", 0.95)),
        Figure("gpu_speedup_vs_reference_style", r18d["steady"] / ref_ips, (">=", 50)),
        Figure("gpu_gradcam_batched_speedup", cam_ours / cam_ref),
    ]
    out.extra = {
        "gpu_device": name,
        "gpu_cpu_cores": workers,
        "gpu_image_size": sz["px"],
        "gpu_batch_size": sz["batch"],
        "gpu_reference_style_images_per_s": ref_ips,
        "gpu_resnet50_224_images_per_s": r50d["steady"],
        "gpu_resnet50_224_ceiling_images_per_s": ceilings["resnet50"],
        "gpu_gradcam_max_abs_diff": cam_diff,
        "gpu_loader_first_batch_device_s": starts["device"],
        "gpu_loader_first_batch_cpu_s": starts["cpu"],
        "gpu_resnet18_warmup_extra_s": warmups["resnet18"],
        "gpu_resnet50_warmup_extra_s": warmups["resnet50"],
    }
    for key, r in results.items():
        out.extra[f"gpu_{key}_images_per_s"] = r["steady"]
        out.extra[f"gpu_{key}_first_epoch_images_per_s"] = r["first"]
        out.extra[f"gpu_{key}_wall_s"] = r["wall_s"]
        out.extra[f"gpu_{key}_first_epoch_extra_s"] = r["first_extra_s"]
        if r["util"] is not None:
            out.extra[f"gpu_{key}_utilisation_pct"] = r["util"]
    out.notes += [
        f"end to end = cxr.training.loop.train's own images/s over its training loop "
        f"(validation and checkpoints excluded), "
        f"mean of the epochs after the first; {sz['epochs']} epochs, params.yaml's settings otherwise",
        "the ceiling runs the same model, optimiser, autocast, memory format and cuDNN flags on 4 ready batches",
        f"the first epoch includes starting {common['num_workers']} loader workers (the first-batch rows) and the "
        f"first steps' kernel loading (the warm-up rows) and, with compile, compilation: compare their sum with "
        f"the first epoch's lost seconds (wall_s and the per-epoch images/s in results.json)",
    ]
    if device.type != "cuda":
        out.notes.append(f"{ON_CPU_ENV}=1: a dry run on the CPU; these figures say nothing about a GPU")
    return out
