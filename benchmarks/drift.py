"""The drift check's false-alarm rate when nothing changed, and its power on planted shifts, at the default sizes.

A champion is trained here by the pipeline's own steps on the default synthetic data (``params.yaml`` as it is).
The reference side is held-out images, as in the drift step (``drift.reference_images`` of the validation and test
splits); each trial compares it with ``drift.max_images`` other images through
``cxr.monitoring.report.compare_samples``, with the default settings:

* **no change** (the false-alarm rate): images the generator makes with other seeds and the same settings, as new
  data arrives, against the held-out images of the champion's data under other split seeds (the reference is one
  draw per champion: varying it measures the rate over champions, not the luck of one); the same against the
  champion's own held-out images (the rate for this one champion); and, for the record, the valid and test
  halves of other split seeds (what the check compared before when nothing new had arrived; it now says
  "no new data" and tests nothing). The headline is the first: the comparison the check makes.
* **planted shifts**, on such new images: brightness, contrast, a share re-encoded as 224 px RGB JPEG (a new
  source at another resolution, as in the real dataset), a class mix with more COVID, a share the generator made
  at another size.

The baseline, on the same p-values, is the rule the check had: every test at ``alpha``, no correction for their
number (its false alarms are what the correction removes). The check's tests are permutation tests, exact when
the two sides are exchangeable: the no-change trials measure that rather than assume it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from benchmarks.common import REPO, Figure, Outcome, Row, trained_project

SIZES: dict[str, dict] = {
    "full": {"per_class": 500, "new_seeds": (101, 102), "null": 200, "this": 100, "splits": 50, "shift": 50},
    # Seconds: a few images at 64 px, one epoch at 32 px, a handful of trials.
    "tiny": {
        "per_class": 24,
        "new_seeds": (101,),
        "null": 4,
        "this": 2,
        "splits": 3,
        "shift": 2,
        "params": {
            "download": {"synthetic": {"size": 64, "workers": 1}, "workers": 1},
            "split": {"valid": 16, "test": 16},
            "train": {"image_size": 32, "epochs": 1, "batch_size": 16, "num_workers": 0, "channels_last": False},
            "drift": {"max_images": 16, "permutations": 500},
        },
    },
}
#: The planted shifts: name -> what it is.
SHIFTS: dict[str, str] = {
    "brightness+13": "every image 13 grey levels brighter (5% of the range)",
    "brightness+26": "every image 26 grey levels brighter (10%)",
    "contrast0.9": "every image's contrast scaled by 0.9 about its mean",
    "contrast0.8": "every image's contrast scaled by 0.8",
    "jpeg224_10%": "10% of the images re-encoded as 224 px RGB JPEG (quality 90)",
    "jpeg224_25%": "25% re-encoded as 224 px RGB JPEG",
    "covid33%": "COVID 33% of the images instead of 25%",
    "covid40%": "COVID 40% of the images",
    "size256_25%": "25% made by the generator at 256 px instead of 299",
}
#: Shifts of a size a radiology team cares about: the power goal (at least 0.9) is held to these.
CARED: tuple[str, ...] = ("brightness+26", "contrast0.8", "jpeg224_25%", "covid40%", "size256_25%")
POWER_GOAL = 0.9


@dataclass
class Pool:
    """Images as the drift step sees them: decoded at the model's size, with labels, file sizes and modes."""

    images: np.ndarray
    labels: np.ndarray
    sizes: np.ndarray
    modes: np.ndarray

    def take(self, idx: np.ndarray):
        from cxr.monitoring.report import Sample

        return Sample(self.images[idx], tuple(self.labels[idx]), tuple(self.sizes[idx]), tuple(self.modes[idx]))

    def __len__(self) -> int:
        return len(self.labels)


def _params(size: str) -> dict:
    """params.yaml as it is, at the benchmark's size."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["download"]["synthetic"]["per_class"] = SIZES[size]["per_class"]
    for section, changes in SIZES[size].get("params", {}).items():
        for key, value in changes.items():
            old = params[section].get(key)
            params[section][key] = {**old, **value} if isinstance(value, dict) and isinstance(old, dict) else value
    return params


def _champion(work: Path, size: str):
    """A project trained on the default data by the pipeline's own steps: (settings, paths)."""
    return trained_project(work / "champion", _params(size))


def _decoded(data: list[bytes], px: int) -> tuple[np.ndarray, list[str], list[str]]:
    """Images decoded at the model's size, with their files' sizes and PIL modes (as the drift step reads them)."""
    from PIL import Image

    from cxr.model.preprocess import decode

    images, sizes, modes = [], [], []
    for raw in data:
        with Image.open(io.BytesIO(raw)) as im:
            sizes.append(f"{im.size[0]}x{im.size[1]}")
            modes.append(im.mode)
        images.append(decode(raw, px))
    return np.stack(images), sizes, modes


def _generated(work: Path, seed: int, per_class: int, side: int) -> tuple[list[bytes], list[str]]:
    """The generator's images for ``seed`` (files of ``side`` px), as bytes with their classes."""
    from cxr.data.synthetic import generate

    out = work / f"new-{seed}-{per_class}-{side}"
    if not (out / "synthetic.json").is_file():
        generate(
            out,
            {c: per_class for c in ("COVID", "Normal", "Lung_Opacity", "Viral Pneumonia")},
            size=side,
            seed=seed,
            workers=2,
        )
    files = sorted(out.glob("*/images/*.png"))
    return [f.read_bytes() for f in files], [f.parent.parent.name for f in files]


def _jpeg224(raw: bytes) -> bytes:
    """An image as another source would store it: 224 px, RGB, JPEG quality 90."""
    import cv2

    gray = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_GRAYSCALE)
    rgb = cv2.cvtColor(cv2.resize(gray, (224, 224), interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2BGR)
    return cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def _pool(data: list[bytes], labels: list[str], px: int) -> Pool:
    images, sizes, modes = _decoded(data, px)
    return Pool(images, np.array(labels), np.array(sizes), np.array(modes))


def _brightness(images: np.ndarray, delta: int) -> np.ndarray:
    return np.clip(images.astype(np.int16) + delta, 0, 255).astype(np.uint8)


def _contrast(images: np.ndarray, factor: float) -> np.ndarray:
    x = images.astype(np.float32)
    mean = x.mean(axis=(1, 2), keepdims=True)
    return np.clip(np.rint(mean + factor * (x - mean)), 0, 255).astype(np.uint8)


class Checker:
    """``compare_samples`` with the champion's features computed once per pool of images."""

    def __init__(self, model, cfg) -> None:
        self.model, self.cfg = model, cfg
        self._features: dict[int, np.ndarray] = {}

    def features(self, pool: Pool) -> np.ndarray:
        from cxr.monitoring.drift import penultimate_features

        if id(pool) not in self._features:
            self._features[id(pool)] = penultimate_features(self.model, pool.images)
        return self._features[id(pool)]

    def compare(self, reference: tuple[Pool, np.ndarray], current: list[tuple[Pool, np.ndarray]], trial: int):
        """The drift report of ``reference`` against the union of ``current``'s parts."""
        from cxr.monitoring.report import Sample, compare_samples

        ref_pool, ref_idx = reference
        ref = ref_pool.take(ref_idx)
        parts = [pool.take(idx) for pool, idx in current]
        cur = Sample(
            np.concatenate([p.images for p in parts]),
            tuple(x for p in parts for x in p.labels),
            tuple(x for p in parts for x in p.sizes),
            tuple(x for p in parts for x in p.modes),
        )
        lookup = {
            id(ref.images): self.features(ref_pool)[ref_idx],
            id(cur.images): np.concatenate([self.features(pool)[idx] for pool, idx in current]),
        }
        return compare_samples(ref, cur, lambda x: lookup[id(x)], self.cfg, seed=trial)


def _flags(report, alpha: float) -> tuple[bool, bool]:
    """(the check flags drift, the uncorrected rule would: any test below alpha)."""
    return report.flagged, any(t["p"] < alpha for t in report.tests.values())


def _rate(flags: list[bool]) -> tuple[float, float, float]:
    """A rate and its 95% Clopper-Pearson interval."""
    from scipy.stats import binomtest

    k, n = int(sum(flags)), len(flags)
    ci = binomtest(k, n).proportion_ci(0.95, method="exact")
    return k / n, float(ci.low), float(ci.high)


#: The no-change trials, by what they compare; the headline false-alarm rate is the first's.
NULLS: tuple[str, ...] = ("new data", "new data, this champion's reference", "split halves (before)")


def held_out(split: np.ndarray, cap: int, rng) -> np.ndarray:
    """Up to ``cap`` of the validation and test images of one split (a seeded sample, as the drift step takes)."""
    idx = np.flatnonzero(np.isin(split, ("valid", "test")))
    return np.sort(rng.choice(idx, cap, replace=False)) if len(idx) > cap else idx


def _null_trials(check: Checker, ref, new: Pool, own: Pool, own_groups: list[int], s, size: str) -> dict:
    """The no-change trials (see ``NULLS``): new images from other generator seeds against the held-out images of
    other split seeds and of the champion's own split; the valid and test halves of other split seeds."""
    from cxr.data.split import assign_splits

    rng = np.random.default_rng(0)
    n, cap, alpha = s.drift.max_images, s.drift.reference_images, s.drift.alpha
    trials = SIZES[size]["null"]
    seeds = [x for x in range(1000, 1000 + trials + 1) if x != s.base.seed][:trials]
    splits = {seed: np.array(assign_splits(list(own.labels), own_groups, s.split, seed)) for seed in seeds}
    out: dict[str, list[tuple[bool, bool]]] = {name: [] for name in NULLS}
    for t, seed in enumerate(seeds):
        idx = rng.choice(len(new), min(n, len(new)), replace=False)
        other = (own, held_out(splits[seed], cap, rng))
        out[NULLS[0]].append(_flags(check.compare(other, [(new, idx)], t), alpha))
        if t < SIZES[size]["this"]:
            out[NULLS[1]].append(_flags(check.compare(ref, [(new, idx)], t), alpha))
    for t, seed in enumerate(seeds[: SIZES[size]["splits"]]):
        valid, test = (np.flatnonzero(splits[seed] == side)[:n] for side in ("valid", "test"))
        out[NULLS[2]].append(_flags(check.compare((own, valid), [(own, test)], t), alpha))
    return out


def _shift_draws(name: str, new: Pool, pools: dict[str, Pool], rng, n: int) -> list[tuple[Pool, np.ndarray]]:
    """One trial's current sample for a shift: which images, from which pool."""
    idx = rng.permutation(len(new))
    if name.startswith(("brightness", "contrast")):
        return [(pools[name], idx[:n])]
    if name.startswith(("jpeg224", "size256")):
        share = int(name.rsplit("_", 1)[1].rstrip("%")) / 100
        k = round(share * n)
        other = pools[name.split("_")[0]]
        return [(other, rng.permutation(len(other))[:k]), (new, idx[: n - k])]
    share = int(name.removeprefix("covid").rstrip("%")) / 100  # the class mix
    covid = np.flatnonzero(new.labels == "COVID")
    rest = np.flatnonzero(new.labels != "COVID")
    k = round(share * n)
    return [(new, np.concatenate([rng.permutation(covid)[:k], rng.permutation(rest)[: n - k]]))]


def _power_trials(check: Checker, ref, new: Pool, pools: dict[str, Pool], s, size: str) -> dict:
    rng = np.random.default_rng(1)
    n = min(s.drift.max_images, len(new))
    return {
        name: [
            _flags(check.compare(ref, _shift_draws(name, new, pools, rng, n), t), s.drift.alpha)
            for t in range(SIZES[size]["shift"])
        ]
        for name in SHIFTS
    }


def _pools(work: Path, size: str, px: int) -> tuple[Pool, dict[str, Pool]]:
    """New images from other seeds, and their shifted versions, by shift."""
    side = 64 if size == "tiny" else 299
    data, labels = [], []
    for seed in SIZES[size]["new_seeds"]:
        d, lab = _generated(work, seed, SIZES[size]["per_class"], side)
        data += d
        labels += lab
    new = _pool(data, labels, px)
    pools = {
        name: Pool(_brightness(new.images, int(name.split("+")[1])), new.labels, new.sizes, new.modes)
        for name in SHIFTS
        if name.startswith("brightness")
    }
    pools |= {
        name: Pool(_contrast(new.images, float(name.removeprefix("contrast"))), new.labels, new.sizes, new.modes)
        for name in SHIFTS
        if name.startswith("contrast")
    }
    pools["jpeg224"] = _pool([_jpeg224(b) for b in data], labels, px)
    d256, l256 = _generated(work, 103, SIZES[size]["per_class"] // 2, 256 if side == 299 else 96)
    pools["size256"] = _pool(d256, l256, px)
    return new, pools


def run(size: str, work: Path) -> Outcome:
    """Run the drift benchmark at ``size`` with scratch space under ``work``."""
    from cxr.data.manifest import read_manifest
    from cxr.data.rawstore import RawStore
    from cxr.model.inference import load_trained

    work.mkdir(parents=True, exist_ok=True)
    s, paths = _champion(work / f"drift-{size}", size)
    model, meta = load_trained(paths.best_checkpoint)
    px = int(meta["image_size"])
    rows = list(read_manifest(paths.manifest).rows)
    with RawStore(paths.raw) as store:
        own = _pool([store.read(r["path"]) for r in rows], [r["label"] for r in rows], px)
    splits = np.array([r["split"] for r in rows])
    ref = (own, held_out(splits, s.drift.reference_images, np.random.default_rng(s.base.seed)))
    check = Checker(model, s.drift)
    new, pools = _pools(work, size, px)
    nulls = _null_trials(check, ref, new, own, [int(r["group"]) for r in rows], s, size)
    power = _power_trials(check, ref, new, pools, s, size)
    return _outcome(s, nulls, power)


def _outcome(s, nulls: dict, power: dict) -> Outcome:
    out = Outcome("drift")
    alpha = s.drift.alpha
    for name, trials in nulls.items():
        rate, low, high = _rate([a for a, _ in trials])
        base = _rate([b for _, b in trials])[0]
        out.rows.append(
            Row(f"false-alarm rate, {name} ({len(trials)} trials; 95% CI {low:.3f}-{high:.3f})", rate, "", base, None)
        )
    headline = nulls[NULLS[0]]
    rate, low, high = _rate([a for a, _ in headline])
    out.figures.append(Figure("drift_false_alarm_rate", rate, ("<=", alpha)))
    out.extra.update(
        drift_false_alarm_ci_low=low,
        drift_false_alarm_ci_high=high,
        drift_false_alarm_rate_uncorrected=_rate([b for _, b in headline])[0],
        drift_false_alarm_rate_this_champion=_rate([a for a, _ in nulls[NULLS[1]]])[0],
    )
    for name, trials in power.items():
        p, low, high = _rate([a for a, _ in trials])
        out.rows.append(
            Row(f"power, {SHIFTS[name]} (95% CI {low:.2f}-{high:.2f})", p, "", _rate([b for _, b in trials])[0], None)
        )
        out.extra[f"drift_power_{name.replace('+', '_plus').replace('%', 'pct').replace('.', '')}"] = p
    cared = min(_rate([a for a, _ in power[name]])[0] for name in CARED)
    out.figures.append(Figure("drift_power_min_cared", cared, (">=", POWER_GOAL)))
    out.notes.append(
        f"alpha {alpha} for the whole check (each of its tests at alpha / tests), {s.drift.permutations} permutations, "
        f"{s.drift.reference_images} held-out images against {s.drift.max_images} new ones (split halves: "
        f"{s.drift.max_images} a side); baseline column: the same trials under the uncorrected rule "
        f"(any test below alpha). Shifts the power goal holds for: {', '.join(CARED)}."
    )
    return out
