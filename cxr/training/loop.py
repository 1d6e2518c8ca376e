"""Training: one epoch, validation, and the loop that ties them with checkpoints and resume (DDP-aware)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from cxr.core.io import atomic_path, ensure_writable, write_csv, write_json
from cxr.core.paths import ResolvedPaths
from cxr.core.sections import Base, Train
from cxr.data.manifest import Manifest, manifest_hash
from cxr.model.inference import autocast, pick_device, predict
from cxr.model.networks import build_model
from cxr.model.preprocess import to_input
from cxr.ops.progress import Progress
from cxr.stats.classification import macro_f1
from cxr.training.attention import LungAttention
from cxr.training.checkpoints import Parts, TrainState, exclusive, restore, save_checkpoint, save_epoch
from cxr.training.dataset import TrainData, build_data
from cxr.training.optim import lr_lambda, make_ema, make_optimizer, mix_batch, seed_everything
from cxr.training.presets import apply_batch, geometric

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
    attention: LungAttention | None = None,
) -> tuple[float, float, float]:
    """One pass over ``loader`` (updating ``ema``, an ``AveragedModel``, after each step); (mean loss, images/s, s).

    With ``cfg.mixup`` > 0, ``mix_rng`` draws each batch's mixing weight and pairing. With ``attention`` (the
    loader's samples then end with their lung masks), its loss is added to the cross-entropy.
    """
    model.train()
    total_loss, total_n = torch.zeros((), device=device), 0
    progress = Progress(len(loader.sampler), desc, logger=log, enabled=show)
    # The rows come with their augmentation parameters when the batch is augmented on the device.
    on_device = getattr(loader.dataset, "path", None) == "device"
    if attention is not None and getattr(loader.dataset, "masks", None) is None:
        raise ValueError("the lung-attention loss needs a loader whose samples carry their lung masks")
    for step, batch in enumerate(loader):
        images, labels = batch[0], batch[1]
        masks = batch[-1] if attention is not None else None
        if on_device:
            params = batch[2].to(device, non_blocking=True)
            images = apply_batch(images.to(device, non_blocking=True), params, clahe=cfg.augment.clahe > 0)
            if masks is not None:
                masks = apply_batch(masks.to(device, non_blocking=True), geometric(params), clahe=False)
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
        if attention is not None:
            loss = loss + attention.loss(y, masks)
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
        # Reading the loss waits for the device: every step, that would leave the GPU idle between steps.
        progress.update(len(y), **({"loss": f"{float(loss.detach()):.4f}"} if step % 50 == 0 else {}))
    seconds = progress.close()
    return float(total_loss) / max(1, total_n), total_n / max(seconds, 1e-9), seconds


def validation_scores(logits: np.ndarray, labels: np.ndarray, k: int) -> dict[str, float]:
    """Loss, accuracy and macro F1 (over all ``k`` classes) on the validation split: all model selection uses."""
    t = torch.from_numpy(logits)
    loss = float(nn.functional.cross_entropy(t, torch.from_numpy(labels)))
    pred = logits.argmax(1)
    return {"val_loss": loss, "val_accuracy": float((pred == labels).mean()), "val_macro_f1": macro_f1(labels, pred, k)}


def _write_history(path: Path, rows: Sequence[dict]) -> None:
    write_csv(
        path, HISTORY_FIELDS, ({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    )


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


@dataclass(frozen=True)
class Process:
    """This process's place in the run: its rank among ``world`` processes (1 without DDP) and its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Rank 0: the one process that logs and writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Launched by torchrun with more than one process."""
        return self.world > 1


def init_process(cfg: Train) -> Process:
    """Join the process group when launched with several processes, and pick this process's device."""
    rank, local_rank, world = _dist_info()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo")
    device = pick_device(cfg.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return Process(rank, world, device)


def build_parts(cfg: Train, k: int, steps_per_epoch: int, device: torch.device) -> Parts:
    """The model (``k`` classes), its optimiser, EMA, per-step learning-rate schedule and (disabled) scaler."""
    model = build_model(cfg.arch, k, cfg.weights, output_stride=cfg.output_stride).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    ema = make_ema(model, cfg.ema_decay)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, total_steps, warmup, cfg.schedule))
    # bf16 autocast needs no loss scaling; the scaler is kept (disabled) so checkpoints have one shape.
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    return Parts(model, ema, optimizer, scheduler, scaler)


def make_criterion(cfg: Train, weights: np.ndarray, device: torch.device) -> nn.Module:
    """Cross-entropy, weighted by class when ``train.class_balance`` is ``loss``, with the label smoothing asked."""
    loss_weight = torch.tensor(weights, dtype=torch.float32, device=device) if cfg.class_balance == "loss" else None
    return nn.CrossEntropyLoss(weight=loss_weight, label_smoothing=cfg.label_smoothing)


def make_fingerprint(cfg: Train, base: Base, manifest: Manifest, world: int) -> dict:
    """What must match for last.pt to be resumed: the train params, seed, classes, data and process count."""
    return {
        "train": cfg.model_dump(mode="json"),
        "seed": base.seed,
        "classes": list(base.labels),
        "data": manifest_hash(manifest),
        "world": world,
    }


def resume_state(paths: ResolvedPaths, fingerprint: dict, parts: Parts, main: bool) -> TrainState:
    """The unfinished run in last.pt, loaded into ``parts``, when its fingerprint matches; else a fresh state."""
    state = restore(paths.last_checkpoint, fingerprint, parts)
    if state is None:
        return TrainState()
    if main:
        log.info("resuming from %s after epoch %d", paths.last_checkpoint, state.start_epoch)
        # DVC deletes best.pt (a cached, non-persistent output) before it reruns the stage, and the
        # loop writes best.pt only when the score improves: write the best so far back from last.pt.
        save_checkpoint(paths.best_checkpoint, state.best)
    return state


def wrap(model: nn.Module, cfg: Train, proc: Process) -> nn.Module:
    """The module the training steps run through: DDP across processes, then compiled when asked."""
    net: nn.Module = model
    if proc.distributed:
        device = proc.device
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    return net


def run_epoch(
    epoch: int,
    net: nn.Module,
    parts: Parts,
    criterion: nn.Module,
    data: TrainData,
    cfg: Train,
    base: Base,
    proc: Process,
    attention: LungAttention | None = None,
) -> dict:
    """Train one epoch through ``net`` and validate the scored weights: the epoch's history row."""
    data.sampler.set_epoch(epoch)
    lr = parts.optimizer.param_groups[0]["lr"]
    # Seeded per (seed, epoch, rank), so a resumed run mixes the same pairs.
    mix_rng = np.random.default_rng([base.seed, epoch, proc.rank]) if cfg.mixup > 0 else None
    train_loss, speed, seconds = train_one_epoch(
        net,
        data.train_loader,
        criterion,
        parts.optimizer,
        parts.scheduler,
        proc.device,
        cfg,
        _epoch_desc(epoch, cfg),
        proc.main,
        parts.ema,
        mix_rng,
        attention,
    )
    if proc.distributed:
        t = torch.tensor([train_loss], device=proc.device)
        dist.all_reduce(t)
        train_loss = float(t) / proc.world
    logits, labels = predict(parts.scored, data.valid_loader, proc.device, cfg.amp, cfg.channels_last)
    scores = validation_scores(logits, labels, len(base.labels))
    row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, **scores}
    row.update(images_per_s=speed * proc.world, seconds=seconds)
    return row


def _epoch_desc(epoch: int, cfg: Train) -> str:
    return f"epoch {epoch + 1}/{cfg.epochs}"


def _val_scores(row: dict) -> dict:
    return {k: v for k, v in row.items() if k.startswith("val_")}


def _log_epoch(epoch: int, row: dict, cfg: Train, improved: bool) -> None:
    log.info(
        "%s train_loss=%.4f val_loss=%.4f val_acc=%.4f val_f1=%.4f %.0f img/s%s",
        _epoch_desc(epoch, cfg),
        row["train_loss"],
        row["val_loss"],
        row["val_accuracy"],
        row["val_macro_f1"],
        row["images_per_s"],
        " *" if improved else "",
    )


def checkpoint_meta(epoch: int, row: dict, cfg: Train, base: Base) -> dict:
    """What both checkpoints say about the model besides its weights: arch, classes, input size, params, scores."""
    return {
        "arch": cfg.arch,
        "classes": list(base.labels),
        "image_size": cfg.image_size,
        "params": cfg.model_dump(mode="json"),
        "epoch": epoch,
        "val": _val_scores(row),
    }


def write_summary(path: Path, state: TrainState, mean_speed: float) -> None:
    """The step's metrics (``dvc metrics show``, short keys): the selected epoch's validation scores, the epochs
    run, the mean training speed in images/s."""
    best = state.history[state.best_epoch - 1] if state.best_epoch else {}
    row = {"val_acc": best.get("val_accuracy"), "val_f1": best.get("val_macro_f1"), "val_loss": best.get("val_loss")}
    summary = {k: round(float(v), 4) for k, v in row.items() if v is not None}
    summary.update(epoch=state.best_epoch, epochs=len(state.history), img_s=round(mean_speed))
    write_json(path, summary)


def _fit(
    cfg: Train,
    base: Base,
    paths: ResolvedPaths,
    resume: bool,
    on_epoch: Callable[[dict], None] | None,
    proc: Process,
) -> tuple[TrainState, float]:
    """The loop: data, model and optimiser, the resume point, the epochs with their checkpoints; (state, img/s)."""
    seed_everything(base.seed, cfg.deterministic)
    data = build_data(cfg, base, paths, proc.device, proc.rank, proc.world)
    parts = build_parts(cfg, len(base.labels), len(data.train_loader), proc.device)
    criterion = make_criterion(cfg, data.class_weights, proc.device)
    fingerprint = make_fingerprint(cfg, base, data.manifest, proc.world)
    state = resume_state(paths, fingerprint, parts, proc.main) if resume else TrainState()
    net = wrap(parts.model, cfg, proc)
    attention = LungAttention(parts.model, cfg.arch, cfg.lung_attention) if cfg.lung_attention > 0 else None

    speeds: list[float] = []
    with attention or contextlib.nullcontext():
        for epoch in range(state.start_epoch, cfg.epochs):
            row = run_epoch(epoch, net, parts, criterion, data, cfg, base, proc, attention)
            speeds.append(row["images_per_s"])
            improved = state.record(row, cfg.monitor)
            stop = cfg.patience is not None and state.stale >= cfg.patience
            if proc.main:
                _log_epoch(epoch, row, cfg, improved)
                done = stop or epoch + 1 == cfg.epochs
                save_epoch(paths, checkpoint_meta(epoch, row, cfg, base), parts, state, fingerprint, improved, done)
                _write_history(paths.history, state.history)
                if on_epoch is not None:
                    on_epoch(dict(row))
            if stop:
                if proc.main:
                    log.info("early stop: %s did not improve for %d epochs", cfg.monitor, cfg.patience)
                break

    mean_speed = float(np.mean(speeds)) if speeds else 0.0
    if proc.main:
        write_summary(paths.train_metrics, state, mean_speed)
        write_preview(data.train_split, data.train_images, cfg, base.seed, paths.augmentation_preview)
    return state, mean_speed


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
    proc = init_process(cfg)
    if proc.main:  # an unwritable models/ or reports/ stops here, not after the first epoch
        ensure_writable(paths.model_dir, paths.train_reports)
    with exclusive(paths.model_dir, proc.main):
        state, mean_speed = _fit(cfg, base, paths, resume, on_epoch, proc)
    if proc.distributed:
        dist.barrier()
    best_score = float(state.best_score or 0.0)
    return TrainResult(
        paths.best_checkpoint, state.best_epoch, best_score, len(state.history), mean_speed, state.resumed_from
    )


def write_preview(train_m: Manifest, images: np.ndarray, cfg: Train, seed: int, out: Path) -> None:
    """Draw the train augmentations on the first training image (by path), by both paths, into ``out``."""
    from cxr.training.presets import preview_figure

    first = min(range(len(train_m)), key=lambda i: train_m.rows[i]["path"])
    fig = preview_figure(np.array(images[first]), cfg.augment, seed=seed)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
