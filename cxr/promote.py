"""Registry promotions: a ``challenger`` alias, a gate, ``champion`` promotion by gate or by hand, and rollback.

Aliases on the registered model (``base.model_name``):

- ``challenger``: the newest version put through the gate;
- ``champion``: the version to serve (``models:/<name>@champion``);
- ``previous_champion``: the champion before the last promotion, the target of :func:`rollback`.

Every decision is recorded as tags: on the version (``gate.decision``, ``gate.reasons``, ``gate.checks``,
``gate.evaluated_at``; ``promotion.*``; ``rollback.*``) and on the registered model (``audit_log``, a bounded
JSON list of events, and ``champion_history``, the bounded list of champion versions in promotion order).

Concurrency. ``set_registered_model_alias`` is an upsert, so ``champion`` is moved, never deleted and re-set:
whatever interleaving of promotions happens, the model ends with exactly one champion, one of the versions
promoted. Promotions and rollbacks also take a lock around their read-modify-write of aliases and tags: a
PostgreSQL advisory lock when the registry URI is a ``postgresql://`` database, otherwise an exclusive
``flock`` on a file in the temporary folder keyed by registry URI and model name (which serialises every
promoter on this machine). The MLflow REST API offers no lock, so between machines sharing one HTTP server
the guarantee is the upsert's: one champion at the end (the last writer's), ``previous_champion`` set to a
former champion, and in the worst case one lost entry of the model's ``audit_log`` (the versions' own
``promotion.*`` tags are never lost).
"""

from __future__ import annotations

import contextlib
import csv
import getpass
import hashlib
import json
import logging
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cxr.config import Registry
from cxr.rawstore import RawStore

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous_champion"
PREDICTIONS_ARTIFACT = "evaluation/predictions.csv"
#: Where a run's split manifest lives when the register step logs it (lets hashes be recovered later).
MANIFEST_ARTIFACT = "pipeline/manifest.csv"
SYNTHETIC = "synthetic"
AUDIT_TAG = "audit_log"
HISTORY_TAG = "champion_history"
#: Registered-model tag values are VARCHAR(5000) in MLflow's SQL schema.
MAX_MODEL_TAG_CHARS = 5000
MAX_AUDIT_ENTRIES = 50
MAX_HISTORY = 50
LOCK_TIMEOUT_S = 120.0
_UNSET: Any = object()  # "not given", where None is a meaningful value


class PromotionError(RuntimeError):
    """A promotion or rollback that cannot be done; the message names the model and version."""


class DataSourceMismatch(PromotionError):
    """A version trained on another data source than the registered model is meant for."""


class ChampionChanged(PromotionError):
    """The champion moved between the gate's evaluation and the promotion it allowed."""


class GateRefused(PromotionError):
    """A manual promotion of a version the gate refused, without ``force``."""


@dataclass
class GateDecision:
    """Whether a version may become champion, why, and every number the gate looked at."""

    promote: bool
    reasons: list[str]
    checks: dict[str, Any] = field(default_factory=dict)


@dataclass
class Promotion:
    """One move of the ``champion`` alias (a promotion or a rollback)."""

    name: str
    version: str
    previous: str | None
    event: str
    reason: str
    actor: str
    at: str
    changed: bool = True


@dataclass
class ChallengerResult:
    """A version put through the gate, and the promotion it earned when auto-promote is on."""

    name: str
    version: str
    decision: GateDecision
    promotion: Promotion | None


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


# --------------------------------------------------------------------------------------------------- helpers


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _label(name: str, version: str | int | None = None) -> str:
    return f"model {name!r}" if version is None else f"model {name!r} version {version}"


def _get_version(client, name: str, version: str | int):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as err:
        raise PromotionError(f"{_label(name, version)}: not found in the registry ({err.message})") from None


def alias_version(client, name: str, alias: str) -> str | None:
    """The version an alias points to, or None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _retry(fn, *args: Any, attempts: int = 5) -> None:
    """Run a registry upsert, retried: MLflow's upserts read then insert, so two first-time writes of one alias
    or model tag can collide on its primary key (IntegrityError); the retry finds the row and updates it."""
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            fn(*args)
            return
        except MlflowException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))


def _set_alias(client, name: str, alias: str, version: str) -> None:
    """Point an alias at a version (an upsert: the alias is never absent in between)."""
    _retry(client.set_registered_model_alias, name, alias, str(version))


def _set_model_tag(client, name: str, key: str, value: str) -> None:
    """Set a registered-model tag (an upsert)."""
    _retry(client.set_registered_model_tag, name, key, value)


def _json_tag(value: Any, limit: int = 20000) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _model_tags(client, name: str) -> dict[str, str]:
    return dict(client.get_registered_model(name).tags or {})


def _json_list(text: str | None) -> list:
    try:
        value = json.loads(text) if text else []
    except json.JSONDecodeError:
        return []
    return value if isinstance(value, list) else []


def _append_audit(client, name: str, entry: dict[str, Any]) -> None:
    """Add an event to the model's ``audit_log`` tag, dropping the oldest to stay within the tag size limit."""
    entry = {**entry, "reason": str(entry.get("reason", ""))[:500]}
    events = [*_json_list(_model_tags(client, name).get(AUDIT_TAG)), entry][-MAX_AUDIT_ENTRIES:]
    text = json.dumps(events, sort_keys=True)
    while len(text) > MAX_MODEL_TAG_CHARS and len(events) > 1:
        events = events[1:]
        text = json.dumps(events, sort_keys=True)
    _set_model_tag(client, name, AUDIT_TAG, text)


def audit_log(client, name: str) -> list[dict[str, Any]]:
    """The recorded promotions and rollbacks of a registered model, oldest first."""
    return _json_list(_model_tags(client, name).get(AUDIT_TAG))


def champion_history(client, name: str) -> list[str]:
    """Champion versions in promotion order (rollbacks remove the rolled-back tail)."""
    return [str(v) for v in _json_list(_model_tags(client, name).get(HISTORY_TAG))]


def _registry_uri(client) -> str:
    return str(getattr(client, "_registry_uri", None) or client.tracking_uri)


@contextlib.contextmanager
def promotion_lock(client, name: str, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[str]:
    """Serialise promotions of one model: a PostgreSQL advisory lock, else a local file lock; yields its kind."""
    uri = _registry_uri(client)
    key = hashlib.sha256(f"{uri}\0{name}".encode()).digest()
    if uri.startswith(("postgresql:", "postgresql+")):
        import sqlalchemy as sa

        lock_id = int.from_bytes(key[:8], "big", signed=True)
        engine = sa.create_engine(uri, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SET lock_timeout = :ms"), {"ms": f"{int(timeout_s * 1000)}ms"})
                conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": lock_id})
                try:
                    yield "postgresql-advisory"
                finally:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": lock_id})
        finally:
            engine.dispose()
        return
    import fcntl

    path = Path(tempfile.gettempdir()) / f"cxr-promote-{key.hex()[:24]}.lock"
    with path.open("a") as fh:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PromotionError(f"{_label(name)}: another promotion held {path} for over {timeout_s:.0f} s")
                time.sleep(0.05)
        try:
            yield "file"
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def default_actor(cwd: Path | None = None) -> str:
    """Who acts when nobody says: the git user (``name <email>``) of ``cwd``, else the operating-system account."""
    found = {}
    for key in ("user.name", "user.email"):
        try:
            proc = subprocess.run(["git", "config", key], cwd=cwd, capture_output=True, text=True, timeout=10)
            found[key] = proc.stdout.strip() if proc.returncode == 0 else ""
        except (OSError, subprocess.SubprocessError):
            found[key] = ""
    name, email = found["user.name"], found["user.email"]
    if name or email:
        return f"{name} <{email}>" if name and email else name or email
    try:
        # LOGNAME, USER, LNAME, USERNAME, then the password database: $USER alone is often unset (cron, containers).
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid {os.getuid()}"


# ------------------------------------------------------------------------------------------------ data source


def model_data_source(client, name: str) -> str | None:
    """The registered model's ``data_source`` tag; set from its first version's tag when absent."""
    tags = _model_tags(client, name)
    if tags.get("data_source"):
        return tags["data_source"]
    quoted = name.replace("'", "\\'")
    versions = client.search_model_versions(f"name='{quoted}'")
    if not versions:
        return None
    first = min(versions, key=lambda mv: int(mv.version))
    source = (first.tags or {}).get("data_source")
    if source:
        _set_model_tag(client, name, "data_source", source)
        log.info("%s: data_source set to %r from version %s", _label(name), source, first.version)
    return source or None


def data_source_problem(client, name: str, mv, model_source: str | None = _UNSET) -> str | None:
    """Why a version may not be champion of this model because of its data source, or None."""
    if model_source is _UNSET:
        model_source = model_data_source(client, name)
    if model_source is None or model_source == SYNTHETIC:
        return None
    version_source = (mv.tags or {}).get("data_source") or "unknown"
    if version_source != model_source:
        return (f"{_label(name, mv.version)} was trained on {version_source!r} data but the registered model "
                f"is for {model_source!r} data: it cannot become champion")
    return None


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

    Per image ``x_i = 1[challenger right] - 1[champion right]``, ``d = mean(x)``. Resample image indices with
    replacement ``n_boot`` times (the pairs stay together), ``d*_k = mean(x[idx_k])``; the one-sided
    ``1 - alpha`` lower confidence bound is the ``alpha`` quantile of ``d*``. Non-inferior when
    ``lower > -margin``.
    """
    import numpy as np

    a = np.asarray(right_challenger, dtype=np.int8)
    z = np.asarray(right_champion, dtype=np.int8)
    n = len(a)
    if n == 0:
        raise ValueError("no paired images to compare")
    x = (a - z).astype(np.float64)
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for start in range(0, n_boot, 256):  # chunks keep memory at 256 x n
        k = min(256, n_boot - start)
        boots[start:start + k] = x[rng.integers(0, n, size=(k, n))].mean(axis=1)
    lower = float(np.quantile(boots, alpha))
    b, c = int((x > 0).sum()), int((x < 0).sum())
    return PairedTest("bootstrap", n, b, c, math.nan, math.nan, float(x.mean()), margin, alpha, None, lower,
                      lower > -margin)


# ------------------------------------------------------------------------------------------------ predictions


def read_manifest_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a split manifest (path, label, split, sha256 ...)."""
    from cxr.data import read_manifest

    return list(read_manifest(Path(path)).rows)


def _download(client, run_id: str, artifact: str, dst: Path) -> Path | None:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return Path(mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact, dst_path=str(dst), tracking_uri=client.tracking_uri))
    except (MlflowException, OSError):
        return None


def _read_csv(path: Path) -> list[dict[str, str]]:
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
    return {r["path"]: r for r in rows if r.get("split") == "test"}


def rescore(model_uri: str, client, images: Sequence[str | bytes]) -> list[str]:
    """Predicted labels of a registered pyfunc model (cxr.serving contract: ``image`` paths or bytes in, ``label`` out)."""
    import mlflow
    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="cxr-rescore-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=model_uri, dst_path=tmp, tracking_uri=client.tracking_uri, registry_uri=_registry_uri(client))
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
    where = _label(name, version)
    mv = _get_version(client, name, version)
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
                client, name, mv, _get_version(client, name, champion), cfg, manifest, raw, seed)
        except (ValueError, OSError) as err:
            cmp_fail, cmp_pass = [f"{where}: cannot compare with champion version {champion}: {err}"], []
        fails += cmp_fail
        passes += cmp_pass
    decision = GateDecision(not fails, fails if fails else passes, checks)
    log.info("gate for %s: %s (%s)", where, "promote" if decision.promote else "reject", "; ".join(decision.reasons))
    return decision


def _compare(client, name, mv, champ, cfg: Registry, manifest, raw, seed) -> tuple[list[str], list[str], dict]:
    """Paired non-inferiority of the challenger ``mv`` against the champion ``champ`` on the challenger's test set."""
    where = _label(name, mv.version)
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

        champ_where = _label(name, champ.version)
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


# ------------------------------------------------------------------------------------------------ actions


def register_challenger(
    client,
    name: str,
    version: str | int,
    cfg: Registry,
    manifest: Path | None = None,
    raw: Path | None = None,
    actor: str = "gate",
) -> ChallengerResult:
    """Make ``version`` the challenger, run the gate, record its decision as tags, and auto-promote when allowed."""
    version = str(version)
    _get_version(client, name, version)
    model_data_source(client, name)
    _set_alias(client, name, CHALLENGER, version)
    decision = evaluate_gate(client, name, version, cfg, manifest, raw)
    tags = {
        "gate.decision": "promote" if decision.promote else "reject",
        "gate.reasons": _json_tag(decision.reasons),
        "gate.checks": _json_tag(decision.checks),
        "gate.evaluated_at": _now(),
        "gate.test": cfg.test,
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    promotion = None
    if decision.promote and cfg.auto_promote:
        promotion = promote(client, name, version, "gate passed: " + "; ".join(decision.reasons), actor,
                            expect_champion=decision.checks.get("champion_version"))
    return ChallengerResult(name, version, decision, promotion)


def promote(
    client,
    name: str,
    version: str | int,
    reason: str,
    actor: str,
    expect_champion: str | None = _UNSET,
    lock: bool = True,
    force: bool = False,
) -> Promotion:
    """Move ``champion`` to ``version`` (the old one kept as ``previous_champion``) and record who, when and why.

    ``expect_champion``: refuse (ChampionChanged) when the champion is no longer this version, e.g. when the
    gate compared against a champion that another promotion has since replaced. A version the gate refused
    is promoted only with ``force`` (GateRefused otherwise), and the promotion is recorded as forced.
    """
    version = str(version)
    where = _label(name, version)
    if not reason or not reason.strip():
        raise PromotionError(f"{where}: a promotion needs a reason")
    if not actor or not actor.strip():
        raise PromotionError(f"{where}: a promotion needs an actor (who promotes)")
    mv = _get_version(client, name, version)
    problem = data_source_problem(client, name, mv)
    if problem:
        raise DataSourceMismatch(problem)
    gate = (mv.tags or {}).get("gate.decision") or "not run"
    forced = gate == "reject"
    if forced and not force:
        reasons = _json_list((mv.tags or {}).get("gate.reasons"))
        why = f": {reasons[0]}" + (f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else "") if reasons else ""
        raise GateRefused(f"{where}: the gate refused it{why}; promote it anyway with --force (recorded as forced)")
    with promotion_lock(client, name) if lock else contextlib.nullcontext():
        current = alias_version(client, name, CHAMPION)
        if expect_champion is not _UNSET and current != expect_champion:
            raise ChampionChanged(f"{where}: the champion is now version {current}, not {expect_champion} as "
                                  "when the gate ran; run the gate again")
        at = _now()
        if current == version:
            log.info("%s is already the champion", where)
            return Promotion(name, version, current, "promote", reason, actor, at, changed=False)
        if current is not None:
            _set_alias(client, name, PREVIOUS, current)
        _set_alias(client, name, CHAMPION, version)  # an upsert: the model is never without a champion
        for key, value in {"promotion.at": at, "promotion.by": actor, "promotion.reason": reason[:5000],
                           "promotion.previous": current or "", "promotion.gate": gate,
                           "promotion.forced": str(forced).lower()}.items():
            client.set_model_version_tag(name, version, key, value)
        history = [*champion_history(client, name), version][-MAX_HISTORY:]
        _set_model_tag(client, name, HISTORY_TAG, json.dumps(history))
        _append_audit(client, name, {"event": "promote", "version": version, "previous": current, "actor": actor,
                                     "reason": reason, "at": at, **({"forced": True} if forced else {})})
    log.log(logging.WARNING if forced else logging.INFO, "%s promoted to champion (was %s) by %s%s: %s", where,
            current, actor, " against the gate's refusal (forced)" if forced else "", reason)
    return Promotion(name, version, current, "promote", reason, actor, at)


def rollback(client, name: str, reason: str, actor: str = "unknown", lock: bool = True) -> Promotion:
    """Move ``champion`` back to ``previous_champion`` and record it; the one before becomes the new previous."""
    if not reason or not reason.strip():
        raise PromotionError(f"{_label(name)}: a rollback needs a reason")
    with promotion_lock(client, name) if lock else contextlib.nullcontext():
        current = alias_version(client, name, CHAMPION)
        target = alias_version(client, name, PREVIOUS)
        if current is None:
            raise PromotionError(f"{_label(name)}: has no champion to roll back")
        if target is None or target == current:
            raise PromotionError(f"{_label(name, current)} is the champion and there is no previous champion "
                                 "to roll back to")
        _set_alias(client, name, CHAMPION, target)
        history = champion_history(client, name)
        while history and history[-1] == current:
            history.pop()
        if history and history[-1] == target:
            history.pop()
        earlier = [v for v in history if v not in (target, current)]
        if earlier:
            _set_alias(client, name, PREVIOUS, earlier[-1])
        else:
            client.delete_registered_model_alias(name, PREVIOUS)
        _set_model_tag(client, name, HISTORY_TAG, json.dumps([*history, target][-MAX_HISTORY:]))
        at = _now()
        for key, value in {"rollback.at": at, "rollback.by": actor, "rollback.reason": reason[:5000],
                           "rollback.to": target}.items():
            client.set_model_version_tag(name, current, key, value)
        client.set_model_version_tag(name, target, "promotion.restored_at", at)
        _append_audit(client, name, {"event": "rollback", "version": target, "previous": current, "actor": actor,
                                     "reason": reason, "at": at})
    log.info("%s: champion rolled back from version %s to %s by %s: %s", _label(name), current, target, actor, reason)
    return Promotion(name, target, current, "rollback", reason, actor, at)


__all__ = ["GateDecision", "Promotion", "ChallengerResult", "PairedTest", "PromotionError", "DataSourceMismatch",
           "ChampionChanged", "GateRefused", "default_actor", "evaluate_gate", "register_challenger", "promote",
           "rollback", "mcnemar_noninferiority", "bootstrap_noninferiority", "model_data_source", "alias_version",
           "audit_log", "champion_history", "promotion_lock"]
