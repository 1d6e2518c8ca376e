"""Training: one epoch, validation, and the loop that ties them with checkpoints and resume (DDP-aware)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from cxr.core.io import atomic_path, write_csv, write_json
from cxr.core.paths import ResolvedPaths
from cxr.core.sections import Base, Train
from cxr.data.manifest import manifest_hash, read_manifest
from cxr.model.cache import CachedImages, decoded_cache
from cxr.model.inference import autocast, load_checkpoint, pick_device, predict
from cxr.model.networks import build_model
from cxr.model.preprocess import to_input
from cxr.stats.classification import macro_f1
from cxr.training.checkpoints import rng_state, save_checkpoint, set_rng_state
from cxr.training.dataset import AugmentedImages, SeededSampler
from cxr.training.optim import class_weights, lr_lambda, make_ema, make_optimizer, mix_batch, seed_everything
from cxr.training.presets import apply_batch, on_device

log = logging.getLogger(__name__)



HISTORY_FIELDS = ("epoch", "lr", "train_loss", "val_loss", "val_accuracy", "val_macro_f1", "images_per_s", "seconds")


@dataclass(frozen=True)
class TrainResult:
    """What a finished training run left behind."""

    best_checkpoint: Path
    best_epoch: int
    best_score: float
    epochs_run: int
    images_per_s: float
    resumed_from: int | None


class Progress:
    """A tqdm bar on a terminal; plain log lines otherwise (CI)."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        self.total, self.desc, self.count, self.start = total, desc, 0, time.perf_counter()
        self.steps = 0
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True)

    def update(self, n: int, loss: torch.Tensor) -> None:
        self.count += n
        if self.bar is not None:
            self.bar.update(n)
            # Reading the loss waits for the device: every step, that would leave the GPU idle between steps.
            self.steps += 1
            if self.steps % 50 == 1:
                self.bar.set_postfix(loss=f"{float(loss):.4f}")

    def close(self) -> float:
        seconds = time.perf_counter() - self.start
        if self.bar is not None:
            self.bar.close()
        return seconds


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    cfg: Train,
    desc: str = "train",
    show: bool = True,
    ema: nn.Module | None = None,
    mix_rng: np.random.Generator | None = None,
) -> tuple[float, float, float]:
    """One pass over ``loader`` (updating ``ema``, an ``AveragedModel``, after each step); (mean loss, images/s, s).

    With ``cfg.mixup`` > 0, ``mix_rng`` draws each batch's mixing weight and pairing.
    """
    model.train()
    total_loss, total_n = torch.zeros((), device=device), 0
    progress = Progress(len(loader.sampler), desc, show)
    for batch in loader:
        images, labels = batch[0], batch[1]
        if len(batch) == 3:  # the rows came with their augmentation parameters: augment the batch on the device
            params = batch[2].to(device, non_blocking=True)
            images = apply_batch(images.to(device, non_blocking=True), params, clahe=cfg.augment.clahe > 0)
        x = to_input(images, device, cfg.channels_last)
        y = labels.to(device, non_blocking=True)
        if cfg.mixup > 0:
            if mix_rng is None:
                raise ValueError("train.mixup > 0 needs a mix_rng")
            x, y_mix, lam = mix_batch(x, y, cfg.mixup, mix_rng)
            with autocast(device, cfg.amp):
                out = model(x)
                loss = lam * criterion(out, y) + (1.0 - lam) * criterion(out, y_mix)
        else:
            with autocast(device, cfg.amp):
                loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        total_loss += loss.detach() * len(y)
        total_n += len(y)
        progress.update(len(y), loss.detach())
    seconds = progress.close()
    return float(total_loss) / max(1, total_n), total_n / max(seconds, 1e-9), seconds


def validation_scores(logits: np.ndarray, labels: np.ndarray, k: int) -> dict[str, float]:
    """Loss, accuracy and macro F1 (over all ``k`` classes) on the validation split: all model selection uses."""
    t = torch.from_numpy(logits)
    loss = float(nn.functional.cross_entropy(t, torch.from_numpy(labels)))
    pred = logits.argmax(1)
    return {"val_loss": loss, "val_accuracy": float((pred == labels).mean()), "val_macro_f1": macro_f1(labels, pred, k)}


def _better(monitor: str, new: float, best: float | None) -> bool:
    if best is None:
        return True
    return new < best if monitor == "val_loss" else new > best


def _write_history(path: Path, rows: Sequence[dict]) -> None:
    write_csv(path, HISTORY_FIELDS, ({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()}
                                     for r in rows))


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def train(
    cfg: Train,
    base: Base,
    paths: ResolvedPaths,
    resume: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train on the manifest's train split, select on valid, write checkpoints, history and metrics.

    ``on_epoch`` receives each epoch's history row (validation scores included) once its checkpoints are
    written; it may raise to stop training (a search pruning a trial does).
    """
    rank, local_rank, world = _dist_info()
    distributed = world > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo")
    main = rank == 0
    device = pick_device(cfg.device)
    if distributed and device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    seed_everything(base.seed, cfg.deterministic)

    classes = base.labels
    k = len(classes)
    manifest = read_manifest(paths.manifest)
    train_m, valid_m = manifest.select("train"), manifest.select("valid")
    if len(train_m) == 0 or len(valid_m) == 0:
        raise ValueError(f"{paths.manifest}: the train and valid splits must both be non-empty")
    y_train, y_valid = train_m.labels(classes), valid_m.labels(classes)
    workers = max(1, cfg.num_workers)
    x_train = decoded_cache(train_m, paths.raw, paths.cache, cfg.image_size, workers=workers)
    x_valid = decoded_cache(valid_m, paths.raw, paths.cache, cfg.image_size, workers=workers)

    weights = class_weights(y_train, k)
    sampler_weights = weights[y_train] if cfg.class_balance == "sampler" else None
    sampler = SeededSampler(len(y_train), base.seed, True, sampler_weights, rank, world)
    loader_kw = dict(
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
        prefetch_factor=4 if cfg.num_workers > 0 else None,
    )
    if cfg.batch_size % world:
        raise ValueError(f"train.batch_size={cfg.batch_size} must be a multiple of the {world} processes")
    # Each rank takes an interleaved share of every global batch, so the global batch (and the
    # gradient DDP averages) is the one a single process would see.
    per_rank = cfg.batch_size // world
    train_loader = DataLoader(
        AugmentedImages(x_train, y_train, cfg.augment, defer=on_device(cfg.augment_backend, device)),
        batch_size=per_rank,
        sampler=sampler,
        drop_last=len(sampler) > per_rank,
        **loader_kw,
    )
    valid_loader = DataLoader(CachedImages(x_valid, y_valid), batch_size=cfg.batch_size * 2, shuffle=False)

    model = build_model(cfg.arch, k, cfg.weights).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    ema = make_ema(model, cfg.ema_decay)
    # With EMA, the averaged weights are what is validated, kept and shipped.
    scored = ema.module if ema is not None else model
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, total_steps, warmup, cfg.schedule))
    # bf16 autocast needs no loss scaling; the scaler is kept (disabled) so checkpoints have one shape.
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    loss_weight = torch.tensor(weights, dtype=torch.float32, device=device) if cfg.class_balance == "loss" else None
    criterion = nn.CrossEntropyLoss(weight=loss_weight, label_smoothing=cfg.label_smoothing)

    fingerprint = {
        "train": cfg.model_dump(mode="json"),
        "seed": base.seed,
        "classes": list(classes),
        "data": manifest_hash(manifest),
        "world": world,
    }
    start_epoch, best_score, best_epoch, history, resumed_from, stale = 0, None, 0, [], None, 0
    best_snapshot: dict = {}
    last, best = paths.last_checkpoint, paths.best_checkpoint
    if resume and last.exists():
        state = load_checkpoint(last)
        if state.get("fingerprint") == fingerprint and not state.get("complete") and "best" in state:
            model.load_state_dict(state["train_model"] if "train_model" in state else state["model"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
            start_epoch = int(state["epoch"]) + 1
            best_score, best_epoch, stale = state["best_score"], int(state["best_epoch"]), int(state["stale"])
            history = json.loads(state["history"])
            resumed_from = start_epoch
            best_snapshot = state["best"]
            if main:
                log.info("resuming from %s after epoch %d", last, start_epoch)
                # DVC deletes best.pt (a cached, non-persistent output) before it reruns the stage, and the
                # loop writes best.pt only when the score improves: write the best so far back from last.pt.
                save_checkpoint(best, best_snapshot)
    net: nn.Module = model
    if distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)

    speeds = []
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        desc = f"epoch {epoch + 1}/{cfg.epochs}"
        # Seeded per (seed, epoch, rank), so a resumed run mixes the same pairs.
        mix_rng = np.random.default_rng([base.seed, epoch, rank]) if cfg.mixup > 0 else None
        train_loss, speed, seconds = train_one_epoch(
            net, train_loader, criterion, optimizer, scheduler, device, cfg, desc, main, ema, mix_rng
        )
        if distributed:
            t = torch.tensor([train_loss], device=device)
            dist.all_reduce(t)
            train_loss = float(t) / world
        speeds.append(speed * world)
        logits, labels = predict(scored, valid_loader, device, cfg.amp, cfg.channels_last)
        scores = validation_scores(logits, labels, k)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, **scores}
        row.update(images_per_s=speed * world, seconds=seconds)
        history.append(row)
        score = scores[cfg.monitor]
        improved = _better(cfg.monitor, score, best_score)
        if improved:
            best_score, best_epoch, stale = score, epoch + 1, 0
        else:
            stale += 1
        stop = cfg.patience is not None and stale >= cfg.patience
        done = stop or epoch + 1 == cfg.epochs
        if main:
            log.info(
                "%s train_loss=%.4f val_loss=%.4f val_acc=%.4f val_f1=%.4f %.0f img/s%s",
                desc, train_loss, scores["val_loss"], scores["val_accuracy"], scores["val_macro_f1"],
                speed * world, " *" if improved else "",
            )
            meta = {"arch": cfg.arch, "classes": list(classes), "image_size": cfg.image_size,
                    "params": cfg.model_dump(mode="json"), "epoch": epoch, "val": scores}
            if improved:
                # A copy on the CPU: last.pt carries it, so a resumed run can always restore best.pt.
                weights = {k_: v.detach().to("cpu", copy=True) for k_, v in scored.state_dict().items()}
                best_snapshot = {"model": weights, **meta}
                save_checkpoint(best, best_snapshot)
            save_checkpoint(
                last,
                {
                    **meta,
                    "model": scored.state_dict(),
                    **({"train_model": model.state_dict(), "ema": ema.state_dict()} if ema is not None else {}),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": rng_state(),
                    "best_score": best_score,
                    "best_epoch": best_epoch,
                    "best": best_snapshot,
                    "stale": stale,
                    "history": json.dumps(history),
                    "fingerprint": fingerprint,
                    "complete": done,
                },
            )
            _write_history(paths.history, history)
            if on_epoch is not None:
                on_epoch(dict(row))
        if stop:
            if main:
                log.info("early stop: %s did not improve for %d epochs", cfg.monitor, cfg.patience)
            break

    mean_speed = float(np.mean(speeds)) if speeds else 0.0
    result = TrainResult(best, best_epoch, float(best_score or 0.0), len(history), mean_speed, resumed_from)
    if main:
        best_row = history[best_epoch - 1] if best_epoch else {}
        summary = {f"best_{k_}": v for k_, v in best_row.items() if k_.startswith("val_")}
        summary.update(best_epoch=best_epoch, epochs_run=len(history), train_images_per_s=round(mean_speed, 2))
        write_json(paths.train_metrics, summary)
        write_preview(train_m, x_train, cfg, base.seed, paths.augmentation_preview)
    if distributed:
        dist.barrier()
    return result


def write_preview(train_m, images: np.ndarray, cfg: Train, seed: int, out: Path) -> None:
    """Draw the train augmentations on the first training image (by path), by both paths, into ``out``."""
    from cxr.training.presets import preview_figure

    first = min(range(len(train_m)), key=lambda i: train_m.rows[i]["path"])
    fig = preview_figure(np.array(images[first]), cfg.augment, seed=seed)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
