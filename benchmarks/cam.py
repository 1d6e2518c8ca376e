"""Which CAM method and layer explain the default model best: localisation and faithfulness, with intervals.

On the default model (trained here by the pipeline's own steps on the default synthetic data, ``params.yaml`` as
it is, or taken from a trained project with ``--project``) and its test split, the CAM methods the library offers
that fit a CNN classifier at the cost of one backward pass (``cxr.core.sections.CAM_METHODS``) explain the predicted
class of each test image, in three rounds so that a full run stays within minutes on one thread: every method at
the gradcam step's stride (``gradcam.stride``; and the baseline, Grad-CAM at 8); the best ``top_methods`` of them
at the other strides (of 8, 16, 32); the best ``top_methods`` so far with the library's smoothing
(``aug_smooth``; ``eigen_smooth`` where the method sums weighted activations). Each is scored:

* **localisation**, as the gradcam step scores it (``cxr.evaluation.gradcam.localisation_metrics``): the pointing
  game on the known synthetic lesions and the share of the map's energy inside the lungs, with bootstrap 95%
  intervals over the test images;
* **faithfulness**, with the library's metrics (``pytorch_grad_cam.metrics``), so that a map that lands on the
  lesion but does not explain the decision is not chosen for its looks: ROAD (remove and debias: the predicted
  class's probability when the most relevant pixels are imputed away against when the least relevant are,
  averaged over the removal percentiles; higher is more faithful) on a seeded stratified sample of test images,
  and the change in that probability when the image is multiplied by its map (all test images);
* **cost**: milliseconds per image for the maps (batched, as the gradcam step computes them).

A map of uniform noise is the floor of each score. ROAD runs on the configurations that localise best (and on
the gradcam step's previous default, the baseline): the imputation solves a sparse system per image and removal.
The choice: among those whose ROAD interval lies above the noise map's ROAD, the highest pointing game plus
lung energy.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from benchmarks.common import REPO, Figure, Outcome, Row, trained_project

SIZES: dict[str, dict] = {
    "full": {"road_images": 48, "percentiles": (20, 80), "top_methods": 2, "shortlist": 3, "batch": 16},
    # Seconds: a few images at 64 px, one epoch at 32 px, ROAD on a handful.
    "tiny": {
        "road_images": 8,
        "percentiles": (20, 80),
        "top_methods": 1,
        "shortlist": 2,
        "batch": 8,
        "params": {
            "download": {"synthetic": {"per_class": 24, "size": 64, "workers": 1}, "workers": 1},
            "split": {"valid": 16, "test": 16},
            "train": {"image_size": 32, "epochs": 1, "batch_size": 16, "num_workers": 0, "channels_last": False},
            "evaluate": {"n_boot": 200},
        },
    },
}
STRIDES = (8, 16, 32)
#: Methods whose map is already a principal component (``eigen_smooth`` changes nothing).
EIGEN_ALREADY = ("eigencam", "eigengradcam")
GOALS: dict[str, tuple[str, float]] = {"cam_pointing_game": (">=", 0.6), "cam_lung_energy": (">=", 0.6)}


@dataclass(frozen=True)
class Config:
    """One way to explain: the library's method, the stride of the layer it reads, its smoothing."""

    method: str
    stride: int
    smoothing: str = ""  # "", "aug" or "eigen"

    @property
    def name(self) -> str:
        return f"{self.method} s{self.stride}" + (f" +{self.smoothing}" if self.smoothing else "")

    @property
    def key(self) -> str:
        return f"{self.method.replace('+', 'p').replace('-', '_')}_s{self.stride}" + (
            f"_{self.smoothing}" if self.smoothing else ""
        )


#: The gradcam step's default before this comparison: the baseline of every ratio.
BASELINE = Config("gradcam", 8)
NOISE = Config("noise", 0)


def first_round(stride: int = BASELINE.stride) -> list[Config]:
    """Every method at ``stride`` (the gradcam step's, ``gradcam.stride``), plain."""
    from cxr.core.sections import CAM_METHODS

    return [Config(method, stride) for method in CAM_METHODS]


def stride_round(best: list[Config]) -> list[Config]:
    """The ``best`` methods at the other strides."""
    return [Config(c.method, stride) for c in best for stride in STRIDES if stride != c.stride]


def smoothing_round(best: list[Config]) -> list[Config]:
    """The ``best`` configurations with ``aug`` and (where it changes the map) ``eigen`` smoothing."""
    return [
        Config(c.method, c.stride, smoothing)
        for c in best
        for smoothing in ("aug", "eigen")
        if not (smoothing == "eigen" and c.method in EIGEN_ALREADY)
    ]


def _params(size: str) -> dict:
    """params.yaml as it is, at the benchmark's size."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, changes in SIZES[size].get("params", {}).items():
        for key, value in changes.items():
            old = params[section].get(key)
            params[section][key] = {**old, **value} if isinstance(value, dict) and isinstance(old, dict) else value
    return params


def _project(work: Path, size: str, project: Path | None):
    """The settings and paths of a trained project: ``project`` as it is, else one trained here by the pipeline's
    own steps on the default data (download, split, train)."""
    from cxr.core.config import load_settings

    if project is not None:
        s = load_settings(project / "params.yaml")
        return s, s.paths(project)
    return trained_project(work / f"cam-{size}", _params(size))


@dataclass
class Subject:
    """The model and its test split, decoded once, with the masks and the images ROAD is run on."""

    model: object
    arch: str
    x: object  # normalised input (N, 1, H, W)
    labels: np.ndarray
    predicted: np.ndarray
    rows: list
    classes: tuple
    size: int
    raw: Path
    masks: tuple
    boot: object
    road: np.ndarray  # indices of the stratified sample ROAD scores
    stride: int  # the gradcam step's (gradcam.stride): the first round's
    results: dict = field(default_factory=dict)


def _subject(s, paths, road_images: int) -> Subject:
    import torch

    from cxr.data.manifest import read_manifest
    from cxr.evaluation.gradcam import Intervals, read_masks
    from cxr.model.cache import decoded_cache
    from cxr.model.inference import load_trained
    from cxr.model.preprocess import to_input

    model, meta = load_trained(paths.best_checkpoint, "cpu")
    classes, size = tuple(meta["classes"]), int(meta["image_size"])
    test = read_manifest(paths.manifest).select("test")
    labels = test.labels(classes)
    x = to_input(torch.from_numpy(np.array(decoded_cache(test, paths.raw, paths.cache, size))).unsqueeze(1), "cpu")
    with torch.no_grad():
        predicted = model(x).argmax(1).numpy()
    rng = np.random.default_rng(s.base.seed)
    per_class = max(1, road_images // len(classes))
    road = np.sort(
        np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(len(classes))])
    )
    boot = Intervals(s.evaluate.n_boot, s.evaluate.ci, s.base.seed)
    masks = read_masks(test.rows, paths.raw, size)
    return Subject(
        model, meta["arch"], x, labels, predicted, test.rows, classes, size, paths.raw, masks, boot, road,
        s.gradcam.stride,
    )  # fmt: skip


def _cams(sub: Subject, config: Config, batch: int) -> tuple[np.ndarray, float]:
    """The maps of the predicted classes and the seconds they took."""
    from cxr.evaluation.cam import Smoothing, compute_cams

    if config == NOISE:
        return np.random.default_rng(0).random((len(sub.labels), sub.size, sub.size), dtype=np.float32), 0.0
    smoothing = Smoothing(aug=config.smoothing == "aug", eigen=config.smoothing == "eigen")
    t0 = time.perf_counter()
    cams = compute_cams(
        sub.model, sub.x, sub.predicted.tolist(), sub.arch, config.method, batch, stride=config.stride,
        smoothing=smoothing,
    )  # fmt: skip
    return cams, time.perf_counter() - t0


def _targets(classes: np.ndarray) -> list:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    return [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]


def _kept(sub: Subject, cams: np.ndarray) -> np.ndarray:
    """Per image, the change in the predicted class's probability when the image is multiplied by its map."""
    import torch
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange

    metric, out = CamMultImageConfidenceChange(), []
    with torch.no_grad():
        for s in range(0, len(cams), 100):  # the library scores its whole input in one forward pass
            out.append(
                np.asarray(
                    metric(sub.x[s : s + 100], cams[s : s + 100], _targets(sub.predicted[s : s + 100]), sub.model)
                )
            )
    return np.concatenate(out).astype(np.float64).reshape(-1)


def _road(sub: Subject, cams: np.ndarray, percentiles: tuple[int, ...]) -> np.ndarray:
    """Per image of the ROAD sample (``cams`` are its maps), the library's ROAD combined score, (LeRF - MoRF) / 2
    averaged over ``percentiles``, in the predicted class's probability."""
    import torch
    from pytorch_grad_cam.metrics.road import ROADCombined

    torch.manual_seed(0)  # the imputation's noise
    x, targets = sub.x[sub.road], _targets(sub.predicted[sub.road])
    with torch.no_grad():
        scores = ROADCombined(percentiles=list(percentiles))(x, cams, targets, sub.model)
    return np.asarray(scores, dtype=np.float64).reshape(-1)


def measure(sub: Subject, config: Config, batch: int) -> tuple[dict, np.ndarray]:
    """Localisation with intervals, the confidence kept and the time per image of one configuration; its maps."""
    from cxr.evaluation.gradcam import localisation_metrics

    cams, seconds = _cams(sub, config, batch)
    m = localisation_metrics(cams, sub.rows, sub.labels, sub.classes, sub.raw, sub.size, sub.boot, sub.masks)
    out = {k: m.get(k) for k in ("pointing_game", "lung_energy", "pointing_game_chance", "lung_area_fraction")}
    for k in ("pointing_game", "lung_energy"):
        out.update({f"{k}_ci_low": m.get(f"{k}_ci_low"), f"{k}_ci_high": m.get(f"{k}_ci_high")})
    sub.boot.put(out, "kept", _kept(sub, cams), sub.labels)
    out["ms_per_image"] = 1000.0 * seconds / len(sub.labels)
    return out, cams


def localisation(r: dict) -> float:
    """The ranking score: pointing game plus lung energy (a missing one counts 0)."""
    return (r.get("pointing_game") or 0.0) + (r.get("lung_energy") or 0.0)


def faithful(results: dict[Config, dict]) -> list[Config]:
    """The configurations whose ROAD interval lies above the noise map's ROAD: maps that explain the decision."""
    floor = results[NOISE].get("road")
    return [
        c
        for c, r in results.items()
        if c != NOISE and r.get("road_ci_low") is not None and floor is not None and r["road_ci_low"] > floor
    ]


def choose(results: dict[Config, dict]) -> Config:
    """The best localisation among the :func:`faithful` configurations (the quicker on a tie); the baseline when
    none is (nothing is shown to explain the decision better, so nothing replaces it)."""
    return max(faithful(results) or [BASELINE], key=lambda c: (localisation(results[c]), -results[c]["ms_per_image"]))


def _ranked(results: dict[Config, dict]) -> list[Config]:
    """The measured configurations, best localisation first (the noise map left out)."""
    return sorted((c for c in results if c != NOISE), key=lambda c: -localisation(results[c]))


def evaluate_all(sub: Subject, size: str) -> dict[Config, dict]:
    """The three rounds measured; ROAD on the noise map, the baseline and the shortlist that localises best."""
    sz = SIZES[size]
    results: dict[Config, dict] = {}
    maps: dict[Config, np.ndarray] = {}

    def measure_all(todo: list[Config]) -> None:
        for config in todo:
            if config in results:
                continue
            results[config], cams = measure(sub, config, sz["batch"])
            maps[config] = cams[sub.road]  # only the ROAD sample is kept
            print(f"  {config.name}: {_brief(results[config])}", file=sys.stderr, flush=True)  # a long run's progress

    measure_all([NOISE, *first_round(sub.stride), BASELINE])
    measure_all(stride_round(_ranked(results)[: sz["top_methods"]]))
    measure_all(smoothing_round(_ranked(results)[: sz["top_methods"]]))
    ranked = _ranked(results)
    shortlist = [NOISE, BASELINE, *[c for c in ranked if c != BASELINE][: sz["shortlist"]]]
    for config in shortlist:
        sub.boot.put(results[config], "road", _road(sub, maps[config], sz["percentiles"]), sub.labels[sub.road])
        print(f"  ROAD {config.name}: {_fmt(results[config], 'road')}", file=sys.stderr, flush=True)
    return results


def _brief(r: dict) -> str:
    return ", ".join(f"{k} {_fmt(r, k)}" for k in ("pointing_game", "lung_energy", "kept")) + (
        f", {r['ms_per_image']:.1f} ms/image"
    )


def _fmt(r: dict, key: str) -> str:
    v = r.get(key)
    if v is None:
        return "-"
    lo, hi = r.get(f"{key}_ci_low"), r.get(f"{key}_ci_high")
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else f"{v:.3f}"


def markdown_table(results: dict[Config, dict], chosen: Config) -> str:
    """The comparison as a Markdown table, best localisation first, the noise map last."""
    head = "| method | stride | smoothing | pointing game [95% CI] | lung energy [95% CI] | ROAD [95% CI] | " \
           "p kept with the map [95% CI] | ms/image |"  # fmt: skip
    lines = [head, "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    order = sorted((c for c in results if c != NOISE), key=lambda c: -localisation(results[c])) + [NOISE]
    for c in order:
        r = results[c]
        mark = " (chosen)" if c == chosen else " (previous default)" if c == BASELINE else ""
        stride = "-" if c == NOISE else str(c.stride)
        lines.append(
            f"| {c.method}{mark} | {stride} | {c.smoothing or '-'} | {_fmt(r, 'pointing_game')} | "
            f"{_fmt(r, 'lung_energy')} | {_fmt(r, 'road')} | {_fmt(r, 'kept')} | {r['ms_per_image']:.1f} |"
        )
    return "\n".join(lines)


def run(size: str, work: Path, project: Path | None = None) -> Outcome:
    """Run the CAM comparison at ``size`` with scratch space under ``work`` (``project``: a trained project)."""
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    s, paths = _project(work, size, project)
    sub = _subject(s, paths, SIZES[size]["road_images"])
    results = evaluate_all(sub, size)
    chosen = choose(results)
    table = markdown_table(results, chosen)
    (work / f"cam-{size}-table.md").write_text(table + "\n")
    return _outcome(results, chosen, table, time.perf_counter() - t0, len(sub.labels), len(sub.road))


def _outcome(results: dict[Config, dict], chosen: Config, table: str, seconds: float, n: int, n_road: int) -> Outcome:
    best, base = results[chosen], results[BASELINE]
    out = Outcome("cam")
    for key, label in (("pointing_game", "pointing game"), ("lung_energy", "lung energy"), ("road", "ROAD")):
        value, ref = best.get(key), base.get(key)
        ratio = value / ref if value is not None and ref else None
        out.rows.append(Row(f"{label}, {chosen.name} vs {BASELINE.name} ({_fmt(best, key)})", value, "", ref, ratio))
    ms, ref_ms = best["ms_per_image"], base["ms_per_image"]
    out.rows.append(Row(f"time per image, {chosen.name} vs {BASELINE.name}", ms, "ms", ref_ms, ms / ref_ms))
    out.figures = [
        Figure("cam_pointing_game", best["pointing_game"], GOALS["cam_pointing_game"]),
        Figure("cam_lung_energy", best["lung_energy"], GOALS["cam_lung_energy"]),
    ]
    extra: dict = {"cam_method": chosen.method, "cam_stride": chosen.stride}
    extra["cam_smoothing"] = chosen.smoothing or "none"
    for prefix, r in (("cam", best), ("cam_baseline", base), ("cam_noise", results[NOISE])):
        for key in ("pointing_game", "lung_energy", "road", "kept"):
            for suffix in ("", "_ci_low", "_ci_high"):
                if r.get(key + suffix) is not None:
                    extra[f"{prefix}_{key}{suffix}"] = r[key + suffix]
        extra[f"{prefix}_ms_per_image"] = r["ms_per_image"]
    for f in out.figures:  # written once, as figures with their goals
        extra.pop(f.key, None)
    extra.update(cam_configs=len(results) - 1, cam_test_images=n, cam_road_images=n_road, cam_benchmark_s=seconds)
    out.extra = extra
    if chosen not in faithful(results):
        out.notes.append("no configuration's ROAD interval lies above the noise map's: the previous default is kept")
    out.notes.append(f"{len(results) - 1} configurations on {n} test images (ROAD on {n_road}):\n{table}")
    return out
