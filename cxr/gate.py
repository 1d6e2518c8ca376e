"""The promotion gate: metric floors and a paired non-inferiority test of a challenger against the champion.

:func:`evaluate_gate` decides whether a registered version may become champion and returns a
:class:`GateDecision` with every number it looked at. It checks the version's data source, its test metrics
against the ``registry`` floors, and, when there is a champion, that the challenger is not worse than it by more
than ``margin`` on the same test images (an exact McNemar test or a paired bootstrap). When the champion was
scored on another test split, it is re-scored on the challenger's test images (:func:`rescore`). The gate only
decides; recording and moving aliases is :mod:`cxr.promote`'s job.
"""

from __future__ import annotations

import csv
import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cxr.config import Registry
from cxr.rawstore import RawStore
from cxr.registry import (
    CHAMPION,
    alias_version,
    data_source_problem,
    get_version,
    model_data_source,
    model_label,
    registry_uri,
)

log = logging.getLogger(__name__)

PREDICTIONS_ARTIFACT = "evaluation/predictions.csv"
#: Where a run's split manifest lives when the register step logs it (lets hashes be recovered later).
MANIFEST_ARTIFACT = "pipeline/manifest.csv"


@dataclass
class GateDecision:
    """Whether a version may become champion, why, and every number the gate looked at."""

    promote: bool
    reasons: list[str]
    checks: dict[str, Any] = field(default_factory=dict)


@dataclass
class PairedTest:
    """Paired comparison of per-image correctness: challenger (1) against champion (0)."""

    test: str
    n: int
    b: int  # challenger right, champion wrong
    c: int  # challenger wrong, champion right
    accuracy_challenger: float
    accuracy_champion: float
    difference: float
    margin: float
    alpha: float
    p_value: float | None
    ci_lower: float | None
    non_inferior: bool


# ------------------------------------------------------------------------------------------------ statistics


def mcnemar_noninferiority(b: int, c: int, n: int, margin: float, alpha: float) -> PairedTest:
    """Exact conditional McNemar test of non-inferiority of the challenger's accuracy with a margin.

    With ``n`` paired images, ``b`` = challenger right & champion wrong, ``c`` = challenger wrong & champion
    right, the accuracy difference is ``d = (b - c) / n``. Hypotheses: H0: d <= -margin, H1: d > -margin.
    Conditional on the ``m = b + c`` discordant pairs, ``b ~ Binomial(m, theta)`` with
    ``theta = p_b / (p_b + p_c)``; at the H0 boundary ``p_b - p_c = -margin``, so with the discordance rate
    ``psi = (b + c) / n`` plugged in, ``theta0 = 1/2 - margin / (2 psi)``. The exact one-sided p-value is
    ``P(B >= b | B ~ Binomial(m, theta0))``; non-inferior when ``p < alpha``. ``margin = 0`` gives the
    classical exact McNemar test (``theta0 = 1/2``). When ``psi <= margin`` (so ``theta0 <= 0``) the two
    models disagree on too few images for the challenger to be ``margin`` worse: p = 0 (non-inferior),
    which includes identical predictions with a positive margin.
    """
    from scipy.stats import binom

    m = b + c
    if n <= 0:
        raise ValueError("no paired images to compare")
    psi = m / n
    if m == 0:
        p = 0.0 if margin > 0 else 1.0
    else:
        theta0 = 0.5 - margin / (2 * psi)
        p = 0.0 if theta0 <= 0 else float(binom.sf(b - 1, m, theta0))
    return PairedTest("mcnemar", n, b, c, math.nan, math.nan, (b - c) / n, margin, alpha, p, None, p < alpha)


def bootstrap_noninferiority(
    right_challenger: Any, right_champion: Any, margin: float, alpha: float, n_boot: int, seed: int = 0
) -> PairedTest:
    """Paired bootstrap of the accuracy difference; non-inferior when the one-sided lower bound exceeds -margin.

    Per image ``x_i = 1[challenger right] - 1[champion right]``, ``d = mean(x)``. ``scipy.stats.bootstrap``
    resamples image indices with replacement ``n_boot`` times (``paired``: the pairs stay together); the
    one-sided ``1 - alpha`` lower confidence bound (percentile method) is the ``alpha`` quantile of the
    resampled ``d*``. Non-inferior when ``lower > -margin``. The same ``seed`` gives the same bound.
    """
    import numpy as np
    from scipy.stats import bootstrap

    a = np.asarray(right_challenger, dtype=np.float64)
    z = np.asarray(right_champion, dtype=np.float64)
    n = len(a)
    if n == 0:
        raise ValueError("no paired images to compare")
    if n < 2:
        raise ValueError(f"a paired bootstrap needs at least 2 paired images, not {n}")
    x = a - z
    result = bootstrap(
        (a, z), lambda ch, cp, axis=-1: np.mean(ch - cp, axis=axis), n_resamples=n_boot,
        batch=256,  # keeps memory at 256 x n
        vectorized=True, paired=True, confidence_level=1 - alpha, alternative="greater", method="percentile",
        rng=np.random.default_rng(seed))
    lower = float(result.confidence_interval.low)
    b, c = int((x > 0).sum()), int((x < 0).sum())
    return PairedTest("bootstrap", n, b, c, math.nan, math.nan, float(x.mean()), margin, alpha, None, lower,
                      lower > -margin)


# ------------------------------------------------------------------------------------------------ predictions


def read_manifest_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a split manifest (path, label, split, sha256 ...)."""
    from cxr.data import read_manifest

    return list(read_manifest(Path(path)).rows)


def _download(client, run_id: str, artifact: str, dst: Path) -> Path | None:
    """A run's artifact downloaded under ``dst``, or None when the run has no such artifact."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return Path(mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact, dst_path=str(dst), tracking_uri=client.tracking_uri))
    except (MlflowException, OSError):
        return None


def _read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header."""
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def hashed_outcomes(
    predictions: list[dict[str, str]], by_path: Mapping[str, Mapping[str, str]] | None, where: str
) -> dict[str, tuple[str, str]] | None:
    """sha256 -> (actual, predicted) for each predicted image, or None when the hashes cannot be recovered.

    A ``sha256`` column in the predictions wins; otherwise the path is looked up in a manifest (test rows).
    Exact copies share a hash and were scored alike, so the first row of each hash stands for it.
    """
    out: dict[str, tuple[str, str]] = {}
    for row in predictions:
        for col in ("actual", "predicted"):
            if col not in row:
                raise ValueError(f"{where}: predictions lack the {col!r} column")
        digest = row.get("sha256") or None
        if digest is None:
            if by_path is None or row.get("path") not in by_path:
                return None
            digest = by_path[row["path"]]["sha256"]
        out.setdefault(digest, (row["actual"], row["predicted"]))
    return out


def _test_rows(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    """The test rows of a manifest, by path."""
    return {r["path"]: r for r in rows if r.get("split") == "test"}


def rescore(model_uri: str, client, images: Sequence[str | bytes]) -> list[str]:
    """Predicted labels of a registered pyfunc model (cxr.serving contract: ``image`` in, ``label`` out)."""
    import mlflow
    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="cxr-rescore-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=model_uri, dst_path=tmp, tracking_uri=client.tracking_uri, registry_uri=registry_uri(client))
        model = mlflow.pyfunc.load_model(local)
        out = model.predict(pd.DataFrame({"image": [p if isinstance(p, bytes) else str(p) for p in images]}))
    if "label" not in getattr(out, "columns", ()):
        raise ValueError(f"{model_uri}: prediction has no 'label' column")
    labels = [str(x) for x in out["label"]]
    if len(labels) != len(images):
        raise ValueError(f"{model_uri}: {len(labels)} predictions for {len(images)} images")
    return labels


# ------------------------------------------------------------------------------------------------ the gate


def _floors(metrics: Mapping[str, float], cfg: Registry, where: str) -> tuple[list[str], list[str], dict]:
    """Failures, passes and checked values of a run's test metrics against the configured floors."""
    fails, passes, checks = [], [], {}
    wanted = {"accuracy": ("test/accuracy", cfg.min_accuracy), "macro_auc": ("test/macro_auc", cfg.min_macro_auc)}
    for cls, floor in sorted(cfg.min_sensitivity.items()):
        wanted[f"{cls}/sensitivity"] = (f"test/{cls}/sensitivity", floor)
    for label, (key, floor) in wanted.items():
        value = metrics.get(key)
        checks[label] = {"metric": key, "value": value, "floor": floor}
        if value is None:
            fails.append(f"{where}: metric {key} is missing from its run (floor {floor})")
        elif value < floor:
            fails.append(f"{where}: {key} = {value:.4f} is below the floor {floor}")
        else:
            passes.append(f"{key} = {value:.4f} >= {floor}")
    return fails, passes, checks


def evaluate_gate(
    client,
    name: str,
    version: str | int,
    cfg: Registry,
    manifest: Path | None = None,
    raw: Path | None = None,
    seed: int = 0,
) -> GateDecision:
    """Decide whether ``version`` may become champion: data source, metric floors, non-inferiority to the champion.

    ``manifest`` is the challenger's split manifest and ``raw`` its image folder: they map predictions to
    content hashes and, when the champion was scored on another test split, let the champion be re-scored on
    the challenger's test images.
    """
    version = str(version)
    where = model_label(name, version)
    mv = get_version(client, name, version)
    fails: list[str] = []
    passes: list[str] = []
    checks: dict[str, Any] = {"name": name, "version": version}

    model_source = model_data_source(client, name)
    problem = data_source_problem(client, name, mv, model_source)
    checks["data_source"] = {"version": (mv.tags or {}).get("data_source"), "model": model_source}
    if problem:
        fails.append(problem)

    if not mv.run_id:
        fails.append(f"{where}: has no MLflow run, so no test metrics")
        return GateDecision(False, fails, checks)
    run = client.get_run(mv.run_id)
    f, p, checks["floors"] = _floors(run.data.metrics, cfg, where)
    fails += f
    passes += p

    champion = alias_version(client, name, CHAMPION)
    checks["champion_version"] = champion
    if champion is None:
        passes.append("no champion yet: floors only")
    elif champion == version:
        passes.append(f"version {version} is already the champion")
    else:
        try:
            cmp_fail, cmp_pass, checks["comparison"] = _compare(
                client, name, mv, get_version(client, name, champion), cfg, manifest, raw, seed)
        except (ValueError, OSError) as err:
            cmp_fail, cmp_pass = [f"{where}: cannot compare with champion version {champion}: {err}"], []
        fails += cmp_fail
        passes += cmp_pass
    decision = GateDecision(not fails, fails if fails else passes, checks)
    log.info("gate for %s: %s (%s)", where, "promote" if decision.promote else "reject", "; ".join(decision.reasons))
    return decision


def _compare(client, name, mv, champ, cfg: Registry, manifest, raw, seed) -> tuple[list[str], list[str], dict]:
    """Paired non-inferiority of the challenger ``mv`` against the champion ``champ`` on the challenger's test set."""
    where = model_label(name, mv.version)
    with tempfile.TemporaryDirectory(prefix="cxr-gate-") as tmp:
        tmp_path = Path(tmp)
        preds = _download(client, mv.run_id, PREDICTIONS_ARTIFACT, tmp_path / "challenger")
        if preds is None:
            return [f"{where}: its run has no {PREDICTIONS_ARTIFACT} to compare with the champion"], [], {}
        ch_preds = _read_csv(preds)
        logged = _download(client, mv.run_id, MANIFEST_ARTIFACT, tmp_path / "challenger-manifest")
        rows = read_manifest_rows(logged) if logged else (read_manifest_rows(manifest) if manifest else None)
        test_rows = _test_rows(rows) if rows is not None else None
        challenger = hashed_outcomes(ch_preds, test_rows, f"{where} {PREDICTIONS_ARTIFACT}")
        if challenger is None:
            return [f"{where}: the test image hashes of its predictions are unknown (no sha256 column, and no "
                    "manifest listing its test paths was given or logged)"], [], {}

        champ_where = model_label(name, champ.version)
        champion = None
        if champ.run_id:
            c_file = _download(client, champ.run_id, PREDICTIONS_ARTIFACT, tmp_path / "champion")
            if c_file is not None:
                c_logged = _download(client, champ.run_id, MANIFEST_ARTIFACT, tmp_path / "champion-manifest")
                c_rows: dict | None = _test_rows(read_manifest_rows(c_logged)) if c_logged else None
                data_version = (mv.tags or {}).get("data_version")
                same_data = data_version not in (None, "", "unknown") and (
                    (champ.tags or {}).get("data_version") == data_version)
                if c_rows is None and same_data:
                    # Same DVC data version: identical raw files, so the challenger's manifest maps its paths too.
                    c_rows = test_rows
                champion = hashed_outcomes(_read_csv(c_file), c_rows, f"{champ_where} {PREDICTIONS_ARTIFACT}")

    checks: dict[str, Any] = {"champion": str(champ.version)}
    if champion is not None and set(champion) == set(challenger):
        checks["split"] = "same"
        keys = sorted(challenger)
        right_ch = [challenger[k][0] == challenger[k][1] for k in keys]
        right_cp = [champion[k][0] == champion[k][1] for k in keys]
    else:
        checks["split"] = "rescored"
        if test_rows is None or raw is None:
            return [f"{where}: champion version {champ.version} was scored on another test split and cannot be "
                    "re-scored without the challenger's manifest and raw image folder"], [], checks
        by_hash: dict[str, dict[str, str]] = {}
        for r in test_rows.values():
            by_hash.setdefault(r["sha256"], r)
        keys = sorted(set(by_hash) & set(challenger))
        if not keys:
            return [f"{where}: its predictions share no test image with its manifest"], [], checks
        try:
            with RawStore(Path(raw)) as store:
                images = [store.model_input(by_hash[k]["path"]) for k in keys]
            labels = rescore(f"models:/{name}/{champ.version}", client, images)
        except Exception as err:  # noqa: BLE001 - any load or predict failure means no comparison: refuse
            return [f"{where}: could not re-score champion version {champ.version} on the challenger's test "
                    f"split: {type(err).__name__}: {err}"], [], checks
        right_ch = [challenger[k][0] == challenger[k][1] for k in keys]
        right_cp = [lab == by_hash[k]["label"] for k, lab in zip(keys, labels)]

    n = len(keys)
    if n == 0:
        return [f"{where}: no test image in common with champion version {champ.version}"], [], checks
    b = sum(1 for x, y in zip(right_ch, right_cp) if x and not y)
    c = sum(1 for x, y in zip(right_ch, right_cp) if y and not x)
    if cfg.test == "mcnemar":
        result = mcnemar_noninferiority(b, c, n, cfg.margin, cfg.alpha)
    else:
        result = bootstrap_noninferiority(right_ch, right_cp, cfg.margin, cfg.alpha, cfg.n_boot, seed)
    result.accuracy_challenger = sum(right_ch) / n
    result.accuracy_champion = sum(right_cp) / n
    checks.update(asdict(result))
    stat = f"p = {result.p_value:.4g}" if result.p_value is not None else f"lower bound {result.ci_lower:+.4f}"
    summary = (f"accuracy {result.accuracy_challenger:.4f} vs champion version {champ.version} "
               f"{result.accuracy_champion:.4f} on {n} paired test images ({checks['split']} split; "
               f"{result.test}, margin {cfg.margin}, {stat}, alpha {cfg.alpha})")
    if result.non_inferior:
        return [], [f"non-inferior: {summary}"], checks
    return [f"{where}: not shown non-inferior: {summary}"], [], checks


__all__ = ["GateDecision", "PairedTest", "PREDICTIONS_ARTIFACT", "MANIFEST_ARTIFACT", "evaluate_gate",
           "mcnemar_noninferiority", "bootstrap_noninferiority", "hashed_outcomes", "read_manifest_rows", "rescore"]
