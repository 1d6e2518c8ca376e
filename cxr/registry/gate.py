"""The promotion gate: the one place that decides whether a registered version becomes champion.

:func:`gate` is the step every front door runs (``cxr gate``, the Prefect flow): it points ``challenger`` at
the version, decides (:func:`evaluate_gate`), applies the drift hold (:func:`drift_hold`), records the
decision as version tags (``gate.decision``, ``gate.reasons``, ``gate.checks``, ``gate.held_by``,
``gate.evaluated_at``) and promotes when the gate passes, nothing holds it and ``auto_promote`` is on.
:class:`GateResult` words the verdict, once, for the command line, the Prefect artifact and the log.

The decision checks the version's data source, its test metrics against the ``registry`` floors, and, when
there is a champion, that the challenger is not worse than it by more than ``margin`` on the same test images
(an exact McNemar test or a paired bootstrap, :mod:`cxr.stats.paired`). When the champion was scored on
another test split, it is re-scored on the challenger's test images (:func:`cxr.registry.predictions.rescore`).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cxr.core.config import Settings
from cxr.core.io import read_csv
from cxr.core.paths import ResolvedPaths
from cxr.core.sections import Registry
from cxr.data.manifest import manifest_hash, read_manifest
from cxr.data.rawstore import RawStore
from cxr.monitoring.drift import drift
from cxr.monitoring.report import read_report
from cxr.ops.markdown import bullets
from cxr.ops.tracking import CHALLENGER, CHAMPION, MANIFEST_ARTIFACT, PREDICTIONS_ARTIFACT
from cxr.registry.aliases import (
    alias_version,
    data_source_problem,
    get_version,
    json_tag,
    model_data_source,
    model_label,
    set_alias,
    utc_now,
)
from cxr.registry.predictions import (
    download_artifact,
    hashed_outcomes,
    manifest_test_rows,
    read_manifest_rows,
    rescore,
)
from cxr.registry.promote import Promotion, promote
from cxr.stats.paired import PairedTest, bootstrap_noninferiority, mcnemar_noninferiority

log = logging.getLogger(__name__)


@dataclass
class GateDecision:
    """Whether a version may become champion, why, and every number the gate looked at."""

    promote: bool
    reasons: list[str]
    checks: dict[str, Any] = field(default_factory=dict)


@dataclass
class GateResult:
    """A version put through the gate: the decision, what held a passing version back, and the promotion."""

    name: str
    version: str
    decision: GateDecision
    promotion: Promotion | None
    #: Why a version that passed was not promoted (drift), or None.
    held_by: str | None = None

    @property
    def held(self) -> bool:
        """Passed, but held back from promotion."""
        return self.decision.promote and self.held_by is not None

    @property
    def verdict(self) -> str:
        """The outcome in words, the same wherever it is shown."""
        if self.promotion is not None:
            return "promoted to champion"
        if not self.decision.promote:
            return "refused"
        if self.held_by:
            return f"passed, not promoted: {self.held_by}"
        return "passed, not promoted (registry.auto_promote is off)"

    def lines(self) -> list[str]:
        """The verdict and the gate's reasons, as the command line prints them."""
        return [f"{self.name} version {self.version}: {self.verdict}", *(f"  - {r}" for r in self.decision.reasons)]

    def markdown(self) -> str:
        """The verdict and the reasons as Markdown (the Prefect artifact)."""
        return "\n".join(
            [f"**{self.name} version {self.version}: {self.verdict}**", "", *bullets(self.decision.reasons)]
        )


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
                client, name, mv, get_version(client, name, champion), cfg, manifest, raw, seed
            )
        except (ValueError, OSError) as err:
            cmp_fail, cmp_pass = [f"{where}: cannot compare with champion version {champion}: {err}"], []
        fails += cmp_fail
        passes += cmp_pass
    decision = GateDecision(not fails, fails if fails else passes, checks)
    log.info("gate for %s: %s (%s)", where, "promote" if decision.promote else "reject", "; ".join(decision.reasons))
    return decision


class _CannotCompare(Exception):
    """Why the challenger cannot be compared with the champion: the gate refuses, naming the reason."""


def _outcomes(client, name: str, mv, champ, manifest: Path | None, tmp: Path) -> tuple[dict, dict | None, dict | None]:
    """(challenger's outcomes by image hash, the champion's or None, the challenger's test rows by path or None)."""
    preds = download_artifact(client, mv.run_id, PREDICTIONS_ARTIFACT, tmp / "challenger")
    if preds is None:
        raise _CannotCompare(f"its run has no {PREDICTIONS_ARTIFACT} to compare with the champion")
    logged = download_artifact(client, mv.run_id, MANIFEST_ARTIFACT, tmp / "challenger-manifest")
    rows = read_manifest_rows(logged) if logged else (read_manifest_rows(manifest) if manifest else None)
    test_rows = manifest_test_rows(rows) if rows is not None else None
    challenger = hashed_outcomes(read_csv(preds), test_rows, f"{model_label(name, mv.version)} {PREDICTIONS_ARTIFACT}")
    if challenger is None:
        raise _CannotCompare(
            "the test image hashes of its predictions are unknown (no sha256 column, and no "
            "manifest listing its test paths was given or logged)"
        )
    champion = None
    c_file = download_artifact(client, champ.run_id, PREDICTIONS_ARTIFACT, tmp / "champion") if champ.run_id else None
    if c_file is not None:
        c_logged = download_artifact(client, champ.run_id, MANIFEST_ARTIFACT, tmp / "champion-manifest")
        c_rows: dict | None = manifest_test_rows(read_manifest_rows(c_logged)) if c_logged else None
        data_version = (mv.tags or {}).get("data_version")
        if (
            c_rows is None
            and data_version not in (None, "", "unknown")
            and ((champ.tags or {}).get("data_version") == data_version)
        ):
            # Same DVC data version: identical raw files, so the challenger's manifest maps its paths too.
            c_rows = test_rows
        champion = hashed_outcomes(
            read_csv(c_file), c_rows, f"{model_label(name, champ.version)} {PREDICTIONS_ARTIFACT}"
        )
    return challenger, champion, test_rows


def _rescored(client, name: str, champ, challenger: dict, test_rows: dict | None, raw: Path | None):
    """(image hashes, challenger right, champion right) with the champion re-scored on the challenger's test images."""
    if test_rows is None or raw is None:
        raise _CannotCompare(
            f"champion version {champ.version} was scored on another test split and cannot be "
            "re-scored without the challenger's manifest and raw image folder"
        )
    by_hash: dict[str, dict[str, str]] = {}
    for r in test_rows.values():
        by_hash.setdefault(r["sha256"], r)
    keys = sorted(set(by_hash) & set(challenger))
    if not keys:
        raise _CannotCompare("its predictions share no test image with its manifest")
    try:
        with RawStore(Path(raw)) as store:
            images = [store.model_input(by_hash[k]["path"]) for k in keys]
        labels = rescore(f"models:/{name}/{champ.version}", client, images)
    except Exception as err:  # noqa: BLE001 - any load or predict failure means no comparison: refuse
        raise _CannotCompare(
            f"could not re-score champion version {champ.version} on the challenger's test "
            f"split: {type(err).__name__}: {err}"
        ) from None
    right_cp = [lab == by_hash[k]["label"] for k, lab in zip(keys, labels, strict=True)]
    return keys, [challenger[k][0] == challenger[k][1] for k in keys], right_cp


def _paired(right_ch: list[bool], right_cp: list[bool], cfg: Registry, seed: int) -> PairedTest:
    """The configured paired non-inferiority test of the challenger's per-image correctness against the champion's."""
    n = len(right_ch)
    if cfg.test == "mcnemar":
        b = sum(1 for x, y in zip(right_ch, right_cp, strict=True) if x and not y)
        c = sum(1 for x, y in zip(right_ch, right_cp, strict=True) if y and not x)
        result = mcnemar_noninferiority(b, c, n, cfg.margin, cfg.alpha)
    else:
        result = bootstrap_noninferiority(right_ch, right_cp, cfg.margin, cfg.alpha, cfg.n_boot, seed)
    result.accuracy_challenger = sum(right_ch) / n
    result.accuracy_champion = sum(right_cp) / n
    return result


def _compare(client, name, mv, champ, cfg: Registry, manifest, raw, seed) -> tuple[list[str], list[str], dict]:
    """Paired non-inferiority of the challenger ``mv`` against the champion ``champ`` on the challenger's test set."""
    where = model_label(name, mv.version)
    checks: dict[str, Any] = {"champion": str(champ.version)}
    try:
        with tempfile.TemporaryDirectory(prefix="cxr-gate-") as tmp:
            challenger, champion, test_rows = _outcomes(client, name, mv, champ, manifest, Path(tmp))
        if champion is not None and set(champion) == set(challenger):
            checks["split"] = "same"
            keys = sorted(challenger)
            right_ch = [challenger[k][0] == challenger[k][1] for k in keys]
            right_cp = [champion[k][0] == champion[k][1] for k in keys]
        else:
            checks["split"] = "rescored"
            keys, right_ch, right_cp = _rescored(client, name, champ, challenger, test_rows, raw)
    except _CannotCompare as why:
        return [f"{where}: {why}"], [], checks
    if not keys:
        return [f"{where}: no test image in common with champion version {champ.version}"], [], checks
    result = _paired(right_ch, right_cp, cfg, seed)
    checks.update(asdict(result))
    stat = f"p = {result.p_value:.4g}" if result.p_value is not None else f"lower bound {result.ci_lower:+.4f}"
    summary = (
        f"accuracy {result.accuracy_challenger:.4f} vs champion version {champ.version} "
        f"{result.accuracy_champion:.4f} on {len(keys)} paired test images ({checks['split']} split; "
        f"{result.test}, margin {cfg.margin}, {stat}, alpha {cfg.alpha})"
    )
    if result.non_inferior:
        return [], [f"non-inferior: {summary}"], checks
    return [f"{where}: not shown non-inferior: {summary}"], [], checks


def register_challenger(
    client,
    name: str,
    version: str | int,
    cfg: Registry,
    *,
    hold: Callable[[str | None], str | None] | None = None,
    actor: str = "gate",
    manifest: Path | None = None,
    raw: Path | None = None,
) -> GateResult:
    """Make ``version`` the challenger, decide, record the decision as tags, and auto-promote when allowed.

    ``hold`` is asked, only when the version passes, whether anything holds it back; it receives the champion
    the gate compared against and returns the reason, or None.
    """
    version = str(version)
    get_version(client, name, version)
    model_data_source(client, name)
    set_alias(client, name, CHALLENGER, version)
    decision = evaluate_gate(client, name, version, cfg, manifest, raw)
    champion = decision.checks.get("champion_version")
    held_by = hold(champion) if decision.promote and hold is not None else None
    tags = {
        "gate.decision": "promote" if decision.promote else "reject",
        "gate.reasons": json_tag(decision.reasons),
        "gate.checks": json_tag(decision.checks),
        "gate.evaluated_at": utc_now(),
        "gate.test": cfg.test,
        **({"gate.held_by": held_by[:5000]} if held_by else {}),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    promotion = None
    if decision.promote and held_by is None and cfg.auto_promote:
        promotion = promote(
            client, name, version, "gate passed: " + "; ".join(decision.reasons), actor, expect_champion=champion
        )
    result = GateResult(name, version, decision, promotion, held_by)
    log.info("%s version %s: %s", name, version, result.verdict)
    return result


def drift_hold(settings: Settings, paths: ResolvedPaths, uri: str, champion: str | None) -> str | None:
    """Why drift holds a passing version back (``drift.block_promotion``), or None.

    The drift report at ``base.paths.drift`` counts when it is the check of the current data against this
    champion; otherwise the check runs now (the drift step itself, :func:`cxr.monitoring.drift.drift`), so a
    scheduled run, ``cxr gate`` after ``dvc repro`` and ``cxr drift`` then ``cxr gate`` hold alike.
    """
    if not (settings.drift.enabled and settings.drift.block_promotion):
        return None
    report = read_report(paths.drift)
    if report is None or not report.describes(manifest_hash(read_manifest(paths.manifest)), champion):
        report = drift(settings, paths, uri)
    return f"data drift ({'; '.join(report.reasons)})" if report.flagged else None


def gate(settings: Settings, paths: ResolvedPaths, client, version: str | int, actor: str = "gate") -> GateResult:
    """The gate step: put ``version`` through the gate with the project's registry and drift settings."""
    return register_challenger(
        client,
        settings.base.model_name,
        version,
        settings.registry,
        manifest=paths.manifest,
        raw=paths.raw,
        actor=actor,
        hold=lambda champion: drift_hold(settings, paths, client.tracking_uri, champion),
    )
