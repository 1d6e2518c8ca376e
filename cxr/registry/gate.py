"""The promotion gate: metric floors and a paired non-inferiority test of a challenger against the champion.

:func:`evaluate_gate` decides whether a registered version may become champion and returns a
:class:`GateDecision` with every number it looked at. It checks the version's data source, its test metrics
against the ``registry`` floors, and, when there is a champion, that the challenger is not worse than it by more
than ``margin`` on the same test images (an exact McNemar test or a paired bootstrap). When the champion was
scored on another test split, it is re-scored on the challenger's test images (:func:`rescore`). The gate only
decides; recording and moving aliases is :mod:`cxr.registry.promote`'s job.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cxr.core.io import read_csv
from cxr.core.sections import Registry
from cxr.data.rawstore import RawStore
from cxr.ops.tracking import CHAMPION, MANIFEST_ARTIFACT, PREDICTIONS_ARTIFACT
from cxr.registry.aliases import (
    alias_version,
    data_source_problem,
    get_version,
    model_data_source,
    model_label,
)
from cxr.registry.predictions import (
    download_artifact,
    hashed_outcomes,
    manifest_test_rows,
    read_manifest_rows,
    rescore,
)
from cxr.stats.paired import bootstrap_noninferiority, mcnemar_noninferiority

log = logging.getLogger(__name__)



@dataclass
class GateDecision:
    """Whether a version may become champion, why, and every number the gate looked at."""

    promote: bool
    reasons: list[str]
    checks: dict[str, Any] = field(default_factory=dict)


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
        preds = download_artifact(client, mv.run_id, PREDICTIONS_ARTIFACT, tmp_path / "challenger")
        if preds is None:
            return [f"{where}: its run has no {PREDICTIONS_ARTIFACT} to compare with the champion"], [], {}
        ch_preds = read_csv(preds)
        logged = download_artifact(client, mv.run_id, MANIFEST_ARTIFACT, tmp_path / "challenger-manifest")
        rows = read_manifest_rows(logged) if logged else (read_manifest_rows(manifest) if manifest else None)
        test_rows = manifest_test_rows(rows) if rows is not None else None
        challenger = hashed_outcomes(ch_preds, test_rows, f"{where} {PREDICTIONS_ARTIFACT}")
        if challenger is None:
            return [f"{where}: the test image hashes of its predictions are unknown (no sha256 column, and no "
                    "manifest listing its test paths was given or logged)"], [], {}

        champ_where = model_label(name, champ.version)
        champion = None
        if champ.run_id:
            c_file = download_artifact(client, champ.run_id, PREDICTIONS_ARTIFACT, tmp_path / "champion")
            if c_file is not None:
                c_logged = download_artifact(client, champ.run_id, MANIFEST_ARTIFACT, tmp_path / "champion-manifest")
                c_rows: dict | None = manifest_test_rows(read_manifest_rows(c_logged)) if c_logged else None
                data_version = (mv.tags or {}).get("data_version")
                same_data = data_version not in (None, "", "unknown") and (
                    (champ.tags or {}).get("data_version") == data_version)
                if c_rows is None and same_data:
                    # Same DVC data version: identical raw files, so the challenger's manifest maps its paths too.
                    c_rows = test_rows
                champion = hashed_outcomes(read_csv(c_file), c_rows, f"{champ_where} {PREDICTIONS_ARTIFACT}")

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
