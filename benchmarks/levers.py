"""Training levers that should make the model look at the lesion: each against none, with intervals.

A lever is a setting of the train section (``LEVERS``): ``output_stride`` 16 (the last ResNet stage at the
previous one's resolution: a finer map to place a lesion in) and ``lung_attention`` (the share of the true class's
activation map outside the lung masks, added to the loss), alone and together. Each is trained from scratch by the
pipeline's own steps, with ``params.yaml``'s recipe otherwise, and compared with the recipe without any (``none``):

* **synthetic** (the default data): the gradcam step's explainer (``gradcam.method`` and ``gradcam.stride``) on
  every test image, scored as the gradcam step scores it (pointing game on the known lesions, share of the map
  inside the lungs), and test accuracy, each with its bootstrap 95% interval over the test images;
* **real** (``../shared/cxr-dev``, the quality benchmark's first split and budget): test accuracy with its
  interval. cxr-dev has no lung masks, so there the lung-attention loss is zero on every image and a lever is the
  run of the same lever without it (``real_twin``): that run is not repeated.

A lever is kept when accuracy does not fall beyond its interval (its upper bound reaches the baseline's point) on
synthetic and on cxr-dev, neither localisation figure falls beyond its interval, and at least one rises beyond
it (its lower bound above the baseline's upper bound). Of those kept, the best pointing game plus lung energy is
the one to make the default.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.common import Figure, Outcome, Row, trained_project

#: The levers tried, by name: each sets every lever's train key, so a row means the same whatever params.yaml
#: holds. ``none`` is the baseline of every comparison.
LEVERS: dict[str, dict] = {
    "none": {"output_stride": 32, "lung_attention": 0.0},
    "output stride 16": {"output_stride": 16, "lung_attention": 0.0},
    "lung attention 1": {"output_stride": 32, "lung_attention": 1.0},
    "lung attention 5": {"output_stride": 32, "lung_attention": 5.0},
    "lung attention 1 + output stride 16": {"output_stride": 16, "lung_attention": 1.0},
}
BASELINE = "none"
#: The split of cxr-dev the levers are judged on (the quality benchmark's first).
SEED = 0
#: The train keys whose effect needs lung masks, and their value when off: cxr-dev has no masks, so there a
#: lever is the same run as the lever without these.
NEEDS_MASKS: dict[str, float] = {"lung_attention": 0.0}
GOALS: dict[str, tuple[str, float]] = {"lever_pointing_game": (">=", 0.6), "lever_lung_energy": (">=", 0.6)}


def _key(name: str) -> str:
    return name.replace(" + ", "_").replace(" ", "_")


def synthetic_run(work: Path, size: str, name: str) -> dict:
    """Train params.yaml's recipe with lever ``name`` on the default synthetic data; accuracy and localisation."""
    from benchmarks.cam import Config, _params, _subject, measure
    from benchmarks.quality import deep_update

    params = _params(size)
    params["train"] = deep_update(params["train"], LEVERS[name])
    t0 = time.perf_counter()
    s, paths = trained_project(work / f"levers-{size}-{_key(name)}", params)
    train_s = time.perf_counter() - t0
    sub = _subject(s, paths, road_images=0)
    config = Config(s.gradcam.method, s.gradcam.stride)
    out, _cams = measure(sub, config, 16)
    sub.boot.put(out, "accuracy", (sub.predicted == sub.labels).astype(np.float64), sub.labels)
    out.update(train_s=train_s, explainer=config.name, test_images=len(sub.labels))
    return out


def real_run(root: Path, source: Path, size: str, name: str) -> dict:
    """Train the quality benchmark's recipe ("ours") with lever ``name`` on the first split of cxr-dev (taken in
    and split at ``root``); its figures."""
    from benchmarks.quality import deep_update, recipes, run_recipe

    train = deep_update(recipes(size)["ours"], LEVERS[name])
    return run_recipe(root, source, size, SEED, f"lever-{_key(name)}", train, keep_last=False)


def real_twin(name: str) -> str:
    """The lever whose run on cxr-dev is lever ``name``'s: the first with the same settings once the keys that need
    lung masks are off (cxr-dev has none)."""

    def unmasked(n: str) -> dict:
        return {**LEVERS[n], **{k: v for k, v in NEEDS_MASKS.items() if k in LEVERS[n]}}

    return next(n for n in LEVERS if unmasked(n) == unmasked(name))


def real_levers() -> list[str]:
    """The levers trained on cxr-dev: one per distinct run there, the baseline first."""
    return list(dict.fromkeys(real_twin(n) for n in LEVERS))


def run_all(work: Path, size: str, jobs: int) -> tuple[dict[str, dict], dict[str, dict]]:
    """Every synthetic and real run, ``jobs`` at a time in their own (spawned) processes."""
    from benchmarks.quality import prepare, split, worker_init

    # cxr-dev (at the tiny size, the quality benchmark's look-alike of it) taken in and split once, before the
    # runs read it side by side.
    root, source, _ = prepare(work, size)
    split(root, source, size, SEED)
    todo = [(synthetic_run, ("synthetic", n), (work, size, n)) for n in LEVERS]
    todo += [(real_run, ("real", n), (root, source, size, n)) for n in real_levers()]
    if jobs <= 1:
        done = {key: fn(*args) for fn, key, args in todo}
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=worker_init) as pool:
            futures = {key: pool.submit(fn, *args) for fn, key, args in todo}
            done = {k: f.result() for k, f in futures.items()}
    synthetic = {n: done["synthetic", n] for n in LEVERS}
    real = {n: {**done["real", real_twin(n)], **_real_flat(done["real", real_twin(n)])} for n in LEVERS}
    return synthetic, real


def _ci(r: dict, key: str) -> tuple[float | None, float | None]:
    return r.get(f"{key}_ci_low"), r.get(f"{key}_ci_high")


def rises(r: dict, base: dict, key: str) -> bool:
    """``key`` rose beyond the intervals: the lever's lower bound above the baseline's upper bound."""
    lo, (_, hi) = _ci(r, key)[0], _ci(base, key)
    return lo is not None and hi is not None and lo > hi


def holds(r: dict, base: dict, key: str = "accuracy") -> bool:
    """``key`` did not fall beyond its interval: the lever's upper bound reaches the baseline's point."""
    hi = r.get(f"{key}_ci_high")
    return hi is not None and base.get(key) is not None and hi >= base[key]


def verdict(name: str, synthetic: dict[str, dict], real: dict[str, dict]) -> tuple[bool, str]:
    """Whether lever ``name`` is kept, and why, in words: accuracy holds on synthetic and on cxr-dev, neither
    localisation figure falls beyond its interval and at least one rises beyond it."""
    r, base = synthetic[name], synthetic[BASELINE]
    why, rose = [], []
    for key, label in (("pointing_game", "pointing game"), ("lung_energy", "lung energy")):
        if rises(r, base, key):
            rose.append(label)
        elif not holds(r, base, key):
            why.append(f"{label} falls beyond the intervals")
    if not rose:
        why.append("neither pointing game nor lung energy rises beyond the intervals")
    if not holds(r, base):
        why.append("synthetic accuracy falls beyond its interval")
    if name in real and BASELINE in real and not holds(real[name], real[BASELINE]):
        why.append("cxr-dev accuracy falls beyond its interval")
    if why:
        return False, "; ".join(why)
    held = [label for label in ("pointing game", "lung energy") if label not in rose]
    return True, "kept: " + " and ".join(rose) + " rise" + ("s" if len(rose) == 1 else "") + " beyond the intervals" + (
        f", {held[0]} within them" if held else ""
    )


def _fmt(r: dict, key: str) -> str:
    v = r.get(key)
    if v is None:
        return "-"
    lo, hi = _ci(r, key)
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{v:.3f}"


def markdown_table(synthetic: dict[str, dict], real: dict[str, dict]) -> str:
    """The levers side by side: synthetic localisation and accuracy, cxr-dev accuracy, training time, verdict."""
    lines = [
        "| lever | pointing game [95% CI] | lung energy [95% CI] | accuracy, synthetic [95% CI] | "
        "accuracy, cxr-dev split 0 [95% CI] | train s (synthetic / cxr-dev) | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in synthetic.items():
        q, twin = real.get(name), real_twin(name)
        dev = "-" if q is None else _fmt(q, "accuracy") + (f" (no masks: the run of {twin})" if twin != name else "")
        secs = f"{r['train_s']:.0f} / " + (f"{q['train_s']:.0f}" if q is not None and twin == name else "-")
        v = "baseline" if name == BASELINE else verdict(name, synthetic, real)[1]
        lines.append(
            f"| {name} | {_fmt(r, 'pointing_game')} | {_fmt(r, 'lung_energy')} | {_fmt(r, 'accuracy')} | {dev} | "
            f"{secs} | {v} |"
        )
    return "\n".join(lines)


def _real_flat(q: dict) -> dict:
    return {"accuracy": q["accuracy"], "accuracy_ci_low": q["accuracy_ci"][0], "accuracy_ci_high": q["accuracy_ci"][1]}


def run(size: str, work: Path, jobs: int = 1) -> Outcome:
    """Train every lever at ``size`` (``jobs`` runs at a time) and compare each with none."""
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    synthetic, real = run_all(work, size, jobs)
    table = markdown_table(synthetic, real)
    (work / f"levers-{size}-table.md").write_text(table + "\n")
    kept = [n for n in LEVERS if n != BASELINE and verdict(n, synthetic, real)[0]]
    best = max(kept, key=lambda n: synthetic[n]["pointing_game"] + synthetic[n]["lung_energy"], default=BASELINE)
    base, top = synthetic[BASELINE], synthetic[best]
    out = Outcome("levers")
    for key, label in (("pointing_game", "pointing game"), ("lung_energy", "lung energy"), ("accuracy", "accuracy")):
        ref, value = base.get(key), top.get(key)
        out.rows.append(
            Row(f"{label}, {best} vs {BASELINE} ({_fmt(top, key)})", value, "", ref, value / ref if ref else None)
        )
    out.figures = [
        Figure("lever_pointing_game", top["pointing_game"], GOALS["lever_pointing_game"]),
        Figure("lever_lung_energy", top["lung_energy"], GOALS["lever_lung_energy"]),
    ]
    extra: dict = {
        "lever_chosen": best,
        "lever_explainer": base["explainer"],
        "levers_benchmark_s": time.perf_counter() - t0,
    }
    for name, r in synthetic.items():
        for key in ("pointing_game", "lung_energy", "accuracy"):
            for suffix in ("", "_ci_low", "_ci_high"):
                if r.get(key + suffix) is not None:
                    extra[f"lever_{_key(name)}_{key}{suffix}"] = r[key + suffix]
    for name, q in real.items():
        for k in ("accuracy", "accuracy_ci_low", "accuracy_ci_high"):
            extra[f"lever_{_key(name)}_real_dev_{k}"] = q[k]
    for f in out.figures:
        extra.pop(f.key, None)
    out.extra = extra
    out.notes.append(f"explainer {base['explainer']} on {base['test_images']} synthetic test images:\n{table}")
    return out
