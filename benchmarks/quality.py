"""Recipe quality on real chest X-rays: the default recipe vs the reference notebook's, same splits, same budget.

The data is ``../shared/cxr-dev`` (1,767 real images, three classes; see its PROVENANCE.md), taken in as a
user would: the ``local`` download source (``cxr.data.download.download``, so ingestion and DVC versioning
run too), then the project's split (``cxr.data.split.split``: valid 300, test 300, stratified, duplicate
groups kept on one side) for each of three split seeds. On every split both recipes train from scratch
with ``cxr.training.loop.train`` and are scored on the test split by ``cxr.evaluation.evaluate.evaluate``
(bootstrap CIs and
the shortcut probes), within the same budget of ``8 x 128^2`` epoch-pixels:

* ours: ``params.yaml``'s train section as it is (cut to the budget if it asks for more);
* the reference notebook's: ResNet-18, Adam at 3e-5 (constant), batch 16, rotation 20 and horizontal
  flip, no class balancing, the last epoch kept (not the best on validation).

A caution that goes with every figure: each cxr-dev class comes from other hospitals and devices (the
viral pneumonia images are paediatric JPEGs, the others adult PNGs), so a high accuracy can come from
the source; the format probe reported beside it tells whether the model leans on the encoding.
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
import yaml

from benchmarks.common import REPO, Figure, Outcome, Row, git_dvc_repo, setup_process

SOURCE = REPO.parent / "shared" / "cxr-dev"
CLASSES: list[str] = ["COVID", "Normal", "Viral Pneumonia"]
#: The training budget: epochs x image side^2.
BUDGET_EPOCH_PIXELS = 8 * 128 * 128
SIZES: dict[str, dict] = {
    "full": {"seeds": (0, 1, 2), "valid": 300, "test": 300, "n_boot": 1000, "train": {}},
    # Seconds: a few generated images per class (two formats, as in cxr-dev), 1 epoch at 32 px.
    "tiny": {
        "seeds": (0,),
        "valid": 6,
        "test": 6,
        "n_boot": 50,
        "per_class": 8,
        "train": {"image_size": 32, "epochs": 1, "batch_size": 8, "num_workers": 0, "channels_last": False},
    },
}
#: The reference notebook's recipe, as overrides of the train section (image size and epochs as ours).
REFERENCE: dict = {
    "arch": "resnet18",
    "optimizer": "adamw",  # with no weight decay: Adam
    "lr": 3e-5,
    "batch_size": 16,
    "weight_decay": 0.0,
    "warmup_epochs": 0.0,
    "schedule": "constant",
    "label_smoothing": 0.0,
    "class_balance": "none",
    "grad_clip": None,
    "augment": {
        "rotate_deg": 20.0,
        "shift": 0.0,
        "scale": 0.0,
        "brightness": 0.0,
        "contrast": 0.0,
        "gamma": [1.0, 1.0],
        "clahe": 0.0,
        "hflip": 0.5,
        "p": 1.0,
    },
}
#: Train keys a recipe feature may add later; the reference turns each off when params.yaml has it.
REFERENCE_OFF: dict = {"ema_decay": None, "mixup": 0.0}
GOALS: dict[str, tuple[str, float]] = {
    "real_dev_accuracy": (">=", 0.95),
    "real_dev_macro_auc": (">=", 0.99),
    "real_dev_covid_sensitivity": (">=", 0.97),
    "real_dev_accuracy_gain_vs_reference": (">=", 0.03),
}


def deep_update(base: dict, changes: dict) -> dict:
    """A copy of ``base`` with ``changes`` merged in (nested)."""
    out = copy.deepcopy(base)
    for k, v in changes.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def fit_budget(train: dict) -> dict:
    """The train section with its epochs cut so that epochs x image_size^2 stays within the budget."""
    px = int(train["image_size"])
    most = BUDGET_EPOCH_PIXELS // (px * px)
    if most < 1:
        raise ValueError(f"train.image_size={px} leaves no whole epoch within {BUDGET_EPOCH_PIXELS} epoch-pixels")
    return {**train, "epochs": min(int(train["epochs"]), most)}


def tiny_source(work: Path, per_class: int) -> Path:
    """A cxr-dev look-alike in seconds: generated images, flat layout, COVID/Normal PNG, Viral Pneumonia JPEG."""
    import cv2

    from cxr.data.synthetic import render

    out = work / f"quality-tiny-src-{per_class}"
    if (out / "manifest.csv").is_file():
        return out
    if out.exists():
        shutil.rmtree(out)
    for cls in CLASSES:
        (out / cls).mkdir(parents=True)
        for i in range(per_class):
            image = render(cls, i, 0, 64)[0]
            if cls == "Viral Pneumonia":
                cv2.imwrite(str(out / cls / f"person{i}_virus_{i}.jpeg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            else:
                cv2.imwrite(str(out / cls / f"{cls}-{i + 1}.png"), cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    (out / "manifest.csv").write_text("path,sha256\n")  # a non-image beside the class folders, as in cxr-dev
    return out


def settings_for(source: Path, size: str, seed: int, run: str, train: dict) -> object:
    """Validated settings: params.yaml, the local source, the split, one recipe's train section, per-run paths."""
    from cxr.core.config import parse_settings
    from cxr.core.paths import Paths

    sz = SIZES[size]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    split_dir = f"runs/seed{seed}"
    run_dir = f"{split_dir}/{run}"
    # Every output of a run lives in its own folder (runs made side by side must never read each other's
    # figures); only the raw data, its decoded cache and the split are shared.
    paths = {k: f"{run_dir}/{Path(v).name}" for k, v in Paths().model_dump().items()}
    paths.update(
        {
            "raw": "data/raw",
            "cache": "data/cache",
            "manifest": f"{split_dir}/manifest.csv",
            "data_report": f"{split_dir}/report.json",
        }
    )
    params = deep_update(
        params,
        {
            "base": {"seed": seed, "classes": CLASSES, "paths": paths},
            "download": {"source": "local", "local": {"path": str(source.resolve())}},
            "split": {"mode": "stratified", "valid": sz["valid"], "test": sz["test"]},
            "evaluate": {"n_boot": sz["n_boot"], "positive_class": "COVID"},
        },
    )
    params["train"] = train
    return parse_settings(params, f"quality benchmark ({run}, split seed {seed})")


def recipes(size: str) -> dict[str, dict]:
    """The two train sections compared: ours (params.yaml) and the reference notebook's, in one budget."""
    ours = yaml.safe_load((REPO / "params.yaml").read_text())["train"]
    ours = fit_budget(deep_update(ours, {"weights": None, **SIZES[size]["train"]}))
    off = {k: v for k, v in REFERENCE_OFF.items() if k in ours}
    reference = deep_update(ours, {**REFERENCE, **off})
    return {"ours": ours, "reference": reference}


def run_recipe(root: Path, source: Path, size: str, seed: int, run: str, train: dict, keep_last: bool) -> dict:
    """Train one recipe on one split from scratch and evaluate it; the test figures, timing and probes."""
    from cxr.evaluation.evaluate import evaluate
    from cxr.training.loop import train as train_model

    s = settings_for(source, size, seed, run, train)
    paths = s.paths(root)
    if paths.model_dir.exists():
        shutil.rmtree(paths.model_dir)
    t0 = time.perf_counter()
    result = train_model(s.train, s.base, paths, resume=False)
    seconds = time.perf_counter() - t0
    if keep_last:  # the reference notebook keeps whatever the last epoch gave
        shutil.copyfile(paths.last_checkpoint, paths.best_checkpoint)
    evaluate(s.base, s.evaluate, paths, device=s.train.device)
    paths.last_checkpoint.unlink()  # the resume state (four times the weights): a finished run never resumes
    m = json.loads(paths.metrics_full.read_text())
    sens = {c: m["per_class"][c]["sensitivity"] for c in CLASSES}
    return {
        "accuracy": m["accuracy"],
        "accuracy_ci": [m["accuracy_ci_low"], m["accuracy_ci_high"]],
        "macro_auc": m["macro_auc"],
        "macro_auc_ci": [m["macro_auc_ci_low"], m["macro_auc_ci_high"]],
        "sensitivity": sens,
        "covid_sensitivity": sens["COVID"],
        "train_s": seconds,
        "images_per_s": result.images_per_s,
        "best_epoch": result.best_epoch,
        "epochs": s.train.epochs,
        "image_size": s.train.image_size,
        "probes": m.get("probes", {}),
    }


def prepare(work: Path, size: str) -> tuple[Path, Path, dict]:
    """A fresh git + DVC project with the data taken in through the ``local`` source; (root, source, counts)."""
    from cxr.data.download import download

    if size == "tiny":
        source = tiny_source(work, SIZES["tiny"]["per_class"])
    else:
        source = SOURCE
        if not source.is_dir():
            raise FileNotFoundError(f"{source}: the real development set is missing (see the README)")
    root = git_dvc_repo(work / f"quality-{size}" / "repo")
    s = settings_for(source, size, 0, "ours", recipes(size)["ours"])
    got = download(s.base, s.download, s.paths(root))
    return root, source, got.counts


def split(root: Path, source: Path, size: str, seed: int) -> dict:
    """The project's split for one seed; its counts."""
    from cxr.data.split import split

    s = settings_for(source, size, seed, "ours", recipes(size)["ours"])
    return split(s.base, s.split, s.paths(root)).counts


def _mean(runs: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in runs]))


def _probe(run: dict, *keys: str) -> float | None:
    v = run["probes"]
    for k in keys:
        if not isinstance(v, dict) or k not in v:
            return None
        v = v[k]
    return v


def worker_init() -> None:
    """A side-by-side run's process: the thread count ``--threads`` put in the environment, quiet logs."""
    threads = os.environ.get("OMP_NUM_THREADS")
    setup_process(int(threads) if threads else None)


def run_all(root: Path, source: Path, size: str, recipe: dict[str, dict], jobs: int) -> dict[tuple[int, str], dict]:
    """Every (split seed, recipe) run, ``jobs`` at a time in their own processes; {(seed, recipe): figures}.

    The runs are independent (own folders, seeded), so side by side they give the figures they give one after
    the other; only their timings change, as they share the machine. The processes are spawned, so a script
    calling this with ``jobs > 1`` needs an ``if __name__ == "__main__":`` guard.
    """
    runs = [(seed, name) for seed in SIZES[size]["seeds"] for name in recipe]
    if jobs <= 1:
        return {
            (seed, name): run_recipe(root, source, size, seed, name, recipe[name], keep_last=name == "reference")
            for seed, name in runs
        }
    # spawn, not fork: the parent may hold torch's thread pools, which a forked child cannot use.
    pool = ProcessPoolExecutor(
        max_workers=min(jobs, len(runs)), mp_context=multiprocessing.get_context("spawn"), initializer=worker_init
    )
    try:
        futures = {
            pool.submit(run_recipe, root, source, size, seed, name, recipe[name], name == "reference"): (seed, name)
            for seed, name in runs
        }
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in done:  # the first failure, as soon as it happens, not after the runs submitted before it
            if future.exception() is not None:
                raise future.exception()
        return {futures[future]: future.result() for future in futures}
    finally:  # on a failure, queued runs are dropped (the pool may already have handed out one more than it runs)
        pool.shutdown(wait=True, cancel_futures=True)


def run(size: str, work: Path, jobs: int = 1) -> Outcome:
    """Run the quality benchmark at ``size`` with scratch space under ``work``, ``jobs`` training runs at a time."""
    if jobs < 1:
        raise ValueError(f"jobs={jobs}: at least one run at a time")
    t0 = time.perf_counter()
    root, source, counts = prepare(work, size)
    ingest_s = time.perf_counter() - t0
    recipe = recipes(size)
    for seed in SIZES[size]["seeds"]:
        split(root, source, size, seed)
    done = run_all(root, source, size, recipe, jobs)
    results = {name: [done[seed, name] for seed in SIZES[size]["seeds"]] for name in recipe}

    ours, ref = results["ours"], results["reference"]
    out = Outcome("quality")
    acc, ref_acc = _mean(ours, "accuracy"), _mean(ref, "accuracy")
    auc, ref_auc = _mean(ours, "macro_auc"), _mean(ref, "macro_auc")
    covid, ref_covid = _mean(ours, "covid_sensitivity"), _mean(ref, "covid_sensitivity")
    out.rows = [
        Row("test accuracy, mean of splits (ours vs reference)", acc, "", ref_acc, acc / ref_acc if ref_acc else None),
        Row("macro AUC, mean of splits", auc, "", ref_auc, auc / ref_auc if ref_auc else None),
        Row("COVID sensitivity, mean of splits", covid, "", ref_covid, covid / ref_covid if ref_covid else None),
    ]
    for c in CLASSES[1:]:
        o = float(np.mean([r["sensitivity"][c] for r in ours]))
        b = float(np.mean([r["sensitivity"][c] for r in ref]))
        out.rows.append(Row(f"{c} sensitivity, mean of splits", o, "", b, o / b if b else None))
    for r, b, seed in zip(ours, ref, SIZES[size]["seeds"], strict=True):
        out.rows.append(
            Row(
                f"  split seed {seed}: accuracy",
                r["accuracy"],
                "",
                b["accuracy"],
                r["accuracy"] / b["accuracy"] if b["accuracy"] else None,
            )
        )
        out.rows.append(Row(f"  split seed {seed}: macro AUC", r["macro_auc"], "", b["macro_auc"], None))
    t_ours, t_ref = _mean(ours, "train_s"), _mean(ref, "train_s")
    out.rows.append(Row("training time per split", t_ours, "s", t_ref, t_ours / t_ref))
    out.rows.append(
        Row(
            "training speed",
            _mean(ours, "images_per_s"),
            "img/s",
            _mean(ref, "images_per_s"),
            _mean(ours, "images_per_s") / _mean(ref, "images_per_s"),
        )
    )
    for label, keys in (("test images re-encoded (PNG as JPEG q90, JPEG as PNG): accuracy", ("format", "accuracy")),):
        o = [_probe(r, *keys) for r in ours]
        b = [_probe(r, *keys) for r in ref]
        if all(v is not None for v in o + b):
            out.rows.append(Row(label, float(np.mean(o)), "", float(np.mean(b)), None))

    out.figures = [
        Figure("real_dev_accuracy", acc, GOALS["real_dev_accuracy"]),
        Figure("real_dev_macro_auc", auc, GOALS["real_dev_macro_auc"]),
        Figure("real_dev_covid_sensitivity", covid, GOALS["real_dev_covid_sensitivity"]),
        Figure("real_dev_reference_accuracy", ref_acc),
        Figure("real_dev_accuracy_gain_vs_reference", acc - ref_acc, GOALS["real_dev_accuracy_gain_vs_reference"]),
    ]
    extra: dict[str, float | int | str] = {
        "real_dev_reference_macro_auc": ref_auc,
        "real_dev_reference_covid_sensitivity": ref_covid,
        "real_dev_train_s": t_ours,
        "real_dev_reference_train_s": t_ref,
        "real_dev_images_per_s": _mean(ours, "images_per_s"),
        "real_dev_reference_images_per_s": _mean(ref, "images_per_s"),
        "real_dev_image_size": ours[0]["image_size"],
        "real_dev_epochs": ours[0]["epochs"],
        "real_dev_images": int(sum(counts.values())),
        "real_dev_ingest_s": ingest_s,
        "real_dev_jobs": jobs,
    }
    for name, runs in (("", ours), ("reference_", ref)):
        for r, seed in zip(runs, SIZES[size]["seeds"], strict=True):
            extra[f"real_dev_{name}accuracy_seed{seed}"] = r["accuracy"]
            extra[f"real_dev_{name}accuracy_seed{seed}_ci_low"] = r["accuracy_ci"][0]
            extra[f"real_dev_{name}accuracy_seed{seed}_ci_high"] = r["accuracy_ci"][1]
            extra[f"real_dev_{name}macro_auc_seed{seed}"] = r["macro_auc"]
            extra[f"real_dev_{name}macro_auc_seed{seed}_ci_low"] = r["macro_auc_ci"][0]
            extra[f"real_dev_{name}macro_auc_seed{seed}_ci_high"] = r["macro_auc_ci"][1]
            for c, v in r["sensitivity"].items():
                extra[f"real_dev_{name}sensitivity_{c.replace(' ', '_')}_seed{seed}"] = v
        fmt = [_probe(r, "format", "accuracy") for r in runs]
        if all(v is not None for v in fmt):
            extra[f"real_dev_{name}format_probe_accuracy"] = float(np.mean(fmt))
        flagged = [_probe(r, "format", "shortcut") for r in runs]
        if all(v is not None for v in flagged):
            extra[f"real_dev_{name}format_shortcut_splits"] = int(sum(bool(v) for v in flagged))
    out.extra = extra
    for r, b, seed in zip(ours, ref, SIZES[size]["seeds"], strict=True):
        out.notes.append(
            f"split seed {seed}: ours accuracy {r['accuracy']:.3f} "
            f"[{r['accuracy_ci'][0]:.3f}, {r['accuracy_ci'][1]:.3f}]"
            f", AUC {r['macro_auc']:.4f} [{r['macro_auc_ci'][0]:.4f}, {r['macro_auc_ci'][1]:.4f}]; reference "
            f"{b['accuracy']:.3f} [{b['accuracy_ci'][0]:.3f}, {b['accuracy_ci'][1]:.3f}], AUC {b['macro_auc']:.4f}"
        )
    if jobs > 1:
        out.notes.append(f"{jobs} runs trained side by side: each training time and speed is under that sharing")
    out.notes.append(
        f"{sum(counts.values())} images {counts}, {ours[0]['epochs']} epochs at {ours[0]['image_size']} px from "
        "scratch; each class comes from other sources (Viral Pneumonia: paediatric JPEGs), so the accuracy can "
        "rest on the source: see the format probe"
    )
    return out
