"""The registry gate, promotion and rollback against a local sqlite MLflow store."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from conftest import label_reading_model

from cxr.core.sections import Registry
from cxr.ops.tracking import CHALLENGER, CHAMPION, PREVIOUS
from cxr.registry.aliases import (
    ChampionChanged,
    DataSourceMismatch,
    GateRefused,
    PromotionError,
    alias_version,
    audit_log,
    champion_history,
    promotion_lock,
)
from cxr.registry.gate import evaluate_gate, register_challenger
from cxr.registry.promote import promote, rollback
from cxr.stats.paired import bootstrap_noninferiority, mcnemar_noninferiority

CLASSES = ("COVID", "Normal")
NAME = "cxr-test"
N_TEST = 200
GOOD = {"test/accuracy": 0.9, "test/macro_auc": 0.95, "test/COVID/sensitivity": 0.9}
CFG = Registry(
    min_accuracy=0.5,
    min_macro_auc=0.7,
    min_sensitivity={"COVID": 0.5},
    margin=0.02,
    alpha=0.05,
    test="mcnemar",
    n_boot=500,
    auto_promote=True,
)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def manifest_rows(prefix: str = "img", n: int = N_TEST) -> list[dict[str, str]]:
    """A manifest whose test split is ``n`` images (alternating labels) plus a few training rows."""
    rows = []
    for i in range(n + 10):
        label = CLASSES[i % 2]
        path = f"{label}/images/{prefix}{i}.png"
        rows.append(
            {
                "path": path,
                "folder": label,
                "label": label,
                "split": "test" if i < n else "train",
                "sha256": sha(f"{prefix}{i}"),
                "group": str(i),
                "source": "synthetic",
            }
        )
    return rows


def write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def predictions(rows: list[dict[str, str]], n_right: int, with_hash: bool = False) -> list[dict[str, str]]:
    """Predictions on the test rows: the first ``n_right`` right, the rest wrong."""
    out = []
    for i, r in enumerate(x for x in rows if x["split"] == "test"):
        wrong = CLASSES[1 - CLASSES.index(r["label"])]
        pred = r["label"] if i < n_right else wrong
        row = {
            "path": r["path"],
            "actual": r["label"],
            "predicted": pred,
            **{f"p_{c}": "1.0" if c == pred else "0.0" for c in CLASSES},
        }
        if with_hash:
            row["sha256"] = r["sha256"]
        out.append(row)
    return out


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory) -> Path:
    """An sqlite MLflow store with its schema migrated once (migrations take seconds; copies are instant)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    client = MlflowClient(f"sqlite:///{path}")
    client.search_experiments()
    client.search_registered_models()
    return path


@pytest.fixture
def store(tmp_path: Path, empty_db: Path):
    """An MlflowClient on a fresh sqlite store, and a function that logs a run and registers a version."""
    import mlflow
    from mlflow import MlflowClient

    shutil.copy(empty_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.create_experiment("promote", artifact_location=(tmp_path / "artifacts").as_uri())

    def add(metrics=GOOD, preds=None, tags=None, model=None, name=NAME, manifest=None) -> str:
        tags = {"data_source": "kaggle", "data_version": "dv1", **(tags or {})}
        with mlflow.start_run(experiment_id=exp) as run:
            mlflow.log_metrics(metrics)
            if preds is not None:
                f = tmp_path / "predictions.csv"
                with f.open("w", newline="") as fh:
                    w = csv.DictWriter(fh, fieldnames=list(preds[0]))
                    w.writeheader()
                    w.writerows(preds)
                mlflow.log_artifact(str(f), "evaluation")
            if manifest is not None:
                mlflow.log_artifact(str(manifest), "pipeline")
            if model is not None:
                info = mlflow.pyfunc.log_model(name="model", python_model=model, pip_requirements=["mlflow"])
                source = info.model_uri
            else:
                source = f"{run.info.artifact_uri}/evaluation"
        try:
            client.create_registered_model(name)
        except Exception:  # noqa: BLE001 - it exists after the first version
            pass
        mv = client.create_model_version(name, source, run_id=run.info.run_id, tags=tags)
        return str(mv.version)

    yield client, add
    mlflow.set_tracking_uri(None)


def test_mcnemar_matches_the_exact_binomial_and_rejects_a_clearly_worse_model() -> None:
    from scipy.stats import binomtest

    # margin 0 is the classical one-sided exact McNemar test.
    t = mcnemar_noninferiority(b=12, c=3, n=100, margin=0.0, alpha=0.05)
    assert t.p_value == pytest.approx(binomtest(12, 15, 0.5, alternative="greater").pvalue)
    assert t.non_inferior
    worse = mcnemar_noninferiority(b=0, c=40, n=200, margin=0.02, alpha=0.05)
    assert not worse.non_inferior and worse.difference == pytest.approx(-0.2)
    same = mcnemar_noninferiority(b=0, c=0, n=200, margin=0.02, alpha=0.05)
    assert same.non_inferior
    # A small loss with much disagreement is not shown non-inferior.
    assert not mcnemar_noninferiority(b=30, c=36, n=200, margin=0.02, alpha=0.05).non_inferior


def test_bootstrap_lower_bound() -> None:
    right = [1] * 180 + [0] * 20
    same = bootstrap_noninferiority(right, right, margin=0.02, alpha=0.05, n_boot=500)
    assert same.non_inferior and same.ci_lower == 0.0
    worse = bootstrap_noninferiority([1] * 140 + [0] * 60, right, margin=0.02, alpha=0.05, n_boot=500)
    assert not worse.non_inferior and worse.ci_lower < -0.1


def test_floors_reject_with_reasons(store) -> None:
    client, add = store
    v = add(metrics={"test/accuracy": 0.3, "test/macro_auc": 0.95})
    result = register_challenger(client, NAME, v, CFG)
    d = result.decision
    assert not d.promote and result.promotion is None
    text = " ".join(d.reasons)
    assert "test/accuracy = 0.3000 is below the floor 0.5" in text
    assert "test/COVID/sensitivity is missing" in text
    assert "test/macro_auc" not in text  # that floor passed
    assert f"version {v}" in d.reasons[0] and NAME in d.reasons[0]
    mv = client.get_model_version(NAME, v)
    assert mv.tags["gate.decision"] == "reject"
    assert json.loads(mv.tags["gate.reasons"]) == d.reasons
    assert json.loads(mv.tags["gate.checks"])["floors"]["accuracy"]["value"] == 0.3
    assert "gate.evaluated_at" in mv.tags
    assert alias_version(client, NAME, CHALLENGER) == v
    assert alias_version(client, NAME, CHAMPION) is None


def test_first_version_becomes_champion(store, tmp_path: Path) -> None:
    client, add = store
    rows = manifest_rows()
    v = add(preds=predictions(rows, 180))
    result = register_challenger(client, NAME, v, CFG, manifest=write_manifest(tmp_path / "m.csv", rows))
    assert result.decision.promote and result.promotion is not None
    assert result.promotion.previous is None
    assert alias_version(client, NAME, CHAMPION) == v
    tags = client.get_model_version(NAME, v).tags
    assert tags["gate.decision"] == "promote" and tags["promotion.by"] == "gate"
    assert client.get_registered_model(NAME).tags["data_source"] == "kaggle"
    assert [e["event"] for e in audit_log(client, NAME)] == ["promote"]


@pytest.mark.parametrize("test", ["mcnemar", "bootstrap"])
def test_worse_challenger_on_the_same_split_is_refused_equal_or_better_passes(store, tmp_path: Path, test) -> None:
    client, add = store
    cfg = CFG.model_copy(update={"test": test})
    rows = manifest_rows()
    manifest = write_manifest(tmp_path / "m.csv", rows)
    v1 = add(preds=predictions(rows, 180))
    assert register_challenger(client, NAME, v1, cfg, manifest=manifest).promotion is not None

    worse = add(preds=predictions(rows, 150))
    r = register_challenger(client, NAME, worse, cfg, manifest=manifest)
    assert not r.decision.promote
    assert "not shown non-inferior" in r.decision.reasons[0]
    checks = r.decision.checks["comparison"]
    assert checks["split"] == "same" and checks["n"] == N_TEST and checks["c"] == 30 and checks["b"] == 0
    assert alias_version(client, NAME, CHAMPION) == v1
    assert alias_version(client, NAME, CHALLENGER) == worse

    equal = add(preds=predictions(rows, 180))
    r = register_challenger(client, NAME, equal, cfg, manifest=manifest)
    assert r.decision.promote, r.decision.reasons
    assert alias_version(client, NAME, CHAMPION) == equal

    better = add(preds=predictions(rows, 195))
    r = register_challenger(client, NAME, better, cfg, manifest=manifest)
    assert r.decision.promote and r.decision.checks["comparison"]["b"] == 15
    assert alias_version(client, NAME, CHAMPION) == better
    assert alias_version(client, NAME, PREVIOUS) == equal


def test_hashes_from_logged_manifest_or_sha_column_and_refusal_without_them(store, tmp_path: Path) -> None:
    client, add = store
    rows = manifest_rows()
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    v1 = add(preds=predictions(rows, 180, with_hash=True))
    promote(client, NAME, v1, "baseline", "alice")
    # The champion's hashes come from its sha256 column, the challenger's from its logged manifest.
    v2 = add(preds=predictions(rows, 180), manifest=manifest)
    assert evaluate_gate(client, NAME, v2, CFG).checks["comparison"]["split"] == "same"
    # No sha256 column, no logged manifest, none given: the gate refuses rather than compare blind.
    v3 = add(preds=predictions(rows, 190))
    d = evaluate_gate(client, NAME, v3, CFG)
    assert not d.promote and "hashes of its predictions are unknown" in d.reasons[0]


def test_champion_on_another_split_is_rescored_on_the_challengers_test_images(store, tmp_path: Path) -> None:
    client, add = store
    old_rows = manifest_rows("old")
    # The champion was scored on another split; as a model it reads the label written in each image "file".
    champ = add(
        preds=predictions(old_rows, 180, with_hash=True),
        model=label_reading_model(CLASSES),
        tags={"data_version": "dv0"},
    )
    promote(client, NAME, champ, "baseline", "alice")
    rows = manifest_rows("new")
    raw = tmp_path / "raw"
    for r in rows:
        (raw / r["path"]).parent.mkdir(parents=True, exist_ok=True)
        (raw / r["path"]).write_text(r["label"])  # the stand-in champion is right on every image
    manifest = write_manifest(tmp_path / "m.csv", rows)

    worse = add(preds=predictions(rows, 185))
    d = evaluate_gate(client, NAME, worse, CFG, manifest=manifest, raw=raw)
    comp = d.checks["comparison"]
    assert comp["split"] == "rescored" and comp["accuracy_champion"] == 1.0 and comp["c"] == 15
    assert not d.promote

    perfect = add(preds=predictions(rows, N_TEST))
    d = evaluate_gate(client, NAME, perfect, CFG, manifest=manifest, raw=raw)
    assert d.promote, d.reasons
    # Without the raw images the champion cannot be re-scored: refused, with the reason.
    d = evaluate_gate(client, NAME, perfect, CFG, manifest=manifest)
    assert not d.promote and "cannot be re-scored" in d.reasons[0]


def test_manual_promote_and_rollback_are_recorded(store) -> None:
    client, add = store
    v1, v2, v3 = add(), add(), add()
    with pytest.raises(PromotionError, match="needs a reason"):
        promote(client, NAME, v1, " ", "alice")
    with pytest.raises(PromotionError, match=f"'{NAME}' version 99: not found"):
        promote(client, NAME, "99", "why", "alice")
    promote(client, NAME, v1, "first release", "alice")
    with pytest.raises(PromotionError, match="no previous champion"):
        rollback(client, NAME, "nothing to go back to", "bob")
    promote(client, NAME, v2, "better on site B", "bob")
    p = promote(client, NAME, v3, "hotfix", "carol")
    assert p.previous == v2 and alias_version(client, NAME, PREVIOUS) == v2
    tags = client.get_model_version(NAME, v3).tags
    assert tags["promotion.reason"] == "hotfix" and tags["promotion.by"] == "carol" and tags["promotion.at"]

    r = rollback(client, NAME, "v3 misbehaves in prod", "dave")
    assert (r.version, r.previous) == (v2, v3)
    assert alias_version(client, NAME, CHAMPION) == v2
    assert alias_version(client, NAME, PREVIOUS) == v1
    assert client.get_model_version(NAME, v3).tags["rollback.reason"] == "v3 misbehaves in prod"
    rollback(client, NAME, "v2 too", "dave")
    assert alias_version(client, NAME, CHAMPION) == v1
    assert alias_version(client, NAME, PREVIOUS) is None
    assert champion_history(client, NAME) == [v1]
    events = [(e["event"], e["version"], e["actor"]) for e in audit_log(client, NAME)]
    assert events == [
        ("promote", v1, "alice"),
        ("promote", v2, "bob"),
        ("promote", v3, "carol"),
        ("rollback", v2, "dave"),
        ("rollback", v1, "dave"),
    ]


def test_audit_log_is_bounded(store) -> None:
    client, add = store
    v1, v2 = add(), add()
    for i in range(12):
        promote(client, NAME, v1 if i % 2 else v2, "x" * 600 + str(i), "alice")
    events = audit_log(client, NAME)
    assert len(json.dumps(events, sort_keys=True)) <= 5000
    # Reasons are cut to 500 characters in the log, and the oldest events dropped to fit one tag.
    assert 1 < len(events) < 12 and all(len(e["reason"]) == 500 for e in events)
    assert events[-1]["version"] == v1 and client.get_model_version(NAME, v1).tags["promotion.reason"].endswith("11")


def test_synthetic_version_never_becomes_champion_of_a_real_model(store) -> None:
    client, add = store
    real = add()
    synthetic = add(tags={"data_source": "synthetic"})
    d = evaluate_gate(client, NAME, synthetic, CFG)
    assert not d.promote and "trained on 'synthetic' data" in d.reasons[0] and f"version {synthetic}" in d.reasons[0]
    with pytest.raises(DataSourceMismatch, match=f"'{NAME}' version {synthetic}"):
        promote(client, NAME, synthetic, "try anyway", "mallory")
    assert alias_version(client, NAME, CHAMPION) is None
    promote(client, NAME, real, "real data", "alice")
    # A registered model that is itself synthetic (the demo) takes any version.
    add(name="demo", tags={"data_source": "synthetic"})
    kaggle_in_demo = add(name="demo")
    promote(client, "demo", kaggle_in_demo, "demo", "alice")
    assert alias_version(client, "demo", CHAMPION) == kaggle_in_demo


def test_champion_changed_since_the_gate_is_refused(store) -> None:
    client, add = store
    v1, v2 = add(), add()
    promote(client, NAME, v1, "first", "alice")
    with pytest.raises(ChampionChanged, match="run the gate again"):
        promote(client, NAME, v2, "gate passed", "gate", expect_champion=None)
    assert alias_version(client, NAME, CHAMPION) == v1


def test_two_promotions_at_once_end_with_one_champion(store) -> None:
    client, add = store
    versions = [add() for _ in range(2)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def go(v: str) -> None:
        try:
            barrier.wait()
            promote(client, NAME, v, "race", f"actor-{v}")
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=go, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    champion = alias_version(client, NAME, CHAMPION)
    assert champion in versions
    # The lock serialised them: the loser of the race is the previous champion, and both were recorded.
    assert alias_version(client, NAME, PREVIOUS) == next(v for v in versions if v != champion)
    assert len(audit_log(client, NAME)) == 2


def test_the_promotion_lock_makes_a_second_promoter_wait(store) -> None:
    client, add = store
    v = add()
    done = threading.Event()
    with promotion_lock(client, NAME) as kind:
        assert kind == "file"
        t = threading.Thread(target=lambda: (promote(client, NAME, v, "waits", "bob"), done.set()))
        t.start()
        time.sleep(1)
        assert not done.is_set() and alias_version(client, NAME, CHAMPION) is None
    t.join(60)
    assert done.is_set() and alias_version(client, NAME, CHAMPION) == v


def test_a_version_the_gate_refused_is_promoted_only_with_force_and_recorded_so(store) -> None:
    client, add = store
    good, bad = add(), add(metrics={"test/accuracy": 0.3, "test/macro_auc": 0.95, "test/COVID/sensitivity": 0.9})
    promote(client, NAME, good, "first release", "alice")
    assert not register_challenger(client, NAME, bad, CFG).decision.promote
    with pytest.raises(GateRefused, match=rf"version {bad}: the gate refused it: .*test/accuracy = 0.3000 .*--force"):
        promote(client, NAME, bad, "we know better", "bob")
    assert alias_version(client, NAME, CHAMPION) == good
    assert client.get_model_version(NAME, bad).tags.get("promotion.by") is None

    promote(client, NAME, bad, "we know better", "bob", force=True)
    assert alias_version(client, NAME, CHAMPION) == bad
    tags = client.get_model_version(NAME, bad).tags
    assert tags["promotion.forced"] == "true" and tags["promotion.gate"] == "reject" and tags["promotion.by"] == "bob"
    assert audit_log(client, NAME)[-1]["forced"] is True
    tags = client.get_model_version(NAME, good).tags  # never gated: allowed, and recorded as such
    assert tags["promotion.forced"] == "false" and tags["promotion.gate"] == "not run"


def test_the_actor_is_the_git_user_else_the_system_account(tmp_path: Path, monkeypatch) -> None:
    import pwd
    import subprocess

    from cxr.registry.aliases import default_actor

    home = tmp_path / "home"
    home.mkdir()
    for key in ("USER", "LOGNAME", "LNAME", "USERNAME", "GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(home))  # no global git config
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / "gitconfig"))
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    assert default_actor(repo) == pwd.getpwuid(os.getuid()).pw_name  # $USER unset: the account, not "unknown"
    subprocess.run(["git", "config", "user.name", "Ada Lovelace"], cwd=repo, check=True)
    subprocess.run(["git", "config", "user.email", "ada@example.org"], cwd=repo, check=True)
    assert default_actor(repo) == "Ada Lovelace <ada@example.org>"


def test_cli_gate_exits_3_on_refusal_and_promote_needs_force(store, tmp_path: Path, monkeypatch) -> None:
    import yaml
    from conftest import tiny_params
    from typer.testing import CliRunner

    from cxr.cli import GATE_REFUSED, app

    client, add = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params(base={"model_name": NAME})))
    bad = add(metrics={"test/accuracy": 0.3, "test/macro_auc": 0.95, "test/COVID/sensitivity": 0.9})
    good = add()
    runner = CliRunner()

    def cxr(*args: str):
        return runner.invoke(app, [*args, "--params", str(params)])

    result = cxr("gate", good)  # no champion yet: the floors decide, and it passes
    assert result.exit_code == 0 and f"version {good}: promoted to champion" in result.stdout, result.output
    result = cxr("gate", bad)
    assert result.exit_code == GATE_REFUSED == 3, result.output
    assert f"version {bad}: refused" in result.stdout and "below the floor" in result.stdout
    result = cxr("promote", bad, "--reason", "override", "--by", "carol")
    assert result.exit_code == 1 and "--force" in result.stderr, result.output
    assert alias_version(client, NAME, CHAMPION) == good
    result = cxr("promote", bad, "--reason", "override", "--by", "carol", "--force")
    assert result.exit_code == 0 and "forced" in result.stdout, result.output
    assert alias_version(client, NAME, CHAMPION) == bad
    assert client.get_model_version(NAME, bad).tags["promotion.by"] == "carol"


def test_bootstrap_is_seeded_and_needs_two_pairs() -> None:
    challenger, champion = [1, 0] * 50, [1] * 70 + [0] * 30
    first = bootstrap_noninferiority(challenger, champion, margin=0.02, alpha=0.05, n_boot=300, seed=7)
    assert first == bootstrap_noninferiority(challenger, champion, margin=0.02, alpha=0.05, n_boot=300, seed=7)
    assert first.ci_lower < first.difference == pytest.approx(-0.2)
    with pytest.raises(ValueError, match="at least 2 paired images"):
        bootstrap_noninferiority([1], [0], margin=0.02, alpha=0.05, n_boot=100)


def test_upserts_retry_collisions_but_not_deterministic_failures() -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST, RESOURCE_DOES_NOT_EXIST

    from cxr.registry.aliases import upsert

    calls: list[str] = []

    def collides_twice(key: str) -> None:
        calls.append(key)
        if len(calls) < 3:
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed", error_code=BAD_REQUEST)

    upsert(collides_twice, "champion")
    assert calls == ["champion"] * 3

    def missing(key: str) -> None:
        calls.append(key)
        raise MlflowException("Registered Model with name=x not found", error_code=RESOURCE_DOES_NOT_EXIST)

    calls.clear()
    with pytest.raises(MlflowException, match="not found"):
        upsert(missing, "champion")
    assert calls == ["champion"]


def test_the_file_lock_times_out_with_a_clear_error(tmp_path: Path) -> None:
    from types import SimpleNamespace

    client = SimpleNamespace(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    with promotion_lock(client, NAME) as kind:
        assert kind == "file"
        with pytest.raises(PromotionError, match=rf"model '{NAME}': another promotion held .* for over 0 s"):
            with promotion_lock(client, NAME, timeout_s=0.2):
                pass
    with promotion_lock(client, NAME, timeout_s=0.2):  # released: free again
        pass


def _drift_project(tmp_path: Path, block: bool) -> tuple[Path, object, object]:
    """params.yaml (drift.block_promotion as given) and a split manifest: (params, settings, paths)."""
    import yaml
    from conftest import tiny_params

    from cxr.core.config import load_settings
    from cxr.data.manifest import write_manifest as write_split

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params(base={"model_name": NAME}, drift={"block_promotion": block})))
    settings = load_settings(params)
    paths = settings.paths(tmp_path)
    write_split(
        [{**r, "split": "valid" if i % 3 else r["split"]} for i, r in enumerate(manifest_rows(n=12))], paths.manifest
    )
    return params, settings, paths


def _flagged_report(paths, champion: str | None):
    from cxr.data.manifest import manifest_hash, read_manifest
    from cxr.monitoring.report import DriftReport, write_report

    report = DriftReport(
        status="checked",
        flagged=True,
        reasons=["intensity: p = 0.001 < alpha 0.01"],
        champion_version=champion,
        data=manifest_hash(read_manifest(paths.manifest)),
    )
    write_report(report, paths.drift)
    return report


@pytest.mark.parametrize("block", [True, False])
def test_drift_holds_a_passing_version_in_the_gate_itself(store, tmp_path: Path, monkeypatch, block: bool) -> None:
    """The hold is part of the decision: `cxr gate` and the flow's gate task both get it from registry.gate."""
    from typer.testing import CliRunner

    from cxr.cli import GATE_HELD, app
    from cxr.registry.gate import gate

    client, add = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
    params, settings, paths = _drift_project(tmp_path, block)
    first, second = add(), add()
    _flagged_report(paths, None)  # the check of this data against no champion: what the gate reads for `first`
    result = gate(settings, paths, client, first)
    assert result.decision.promote
    if not block:  # drift is reported, never a reason to hold
        assert result.promotion is not None and result.held_by is None
        assert result.verdict == "promoted to champion"
        return
    assert result.held and result.promotion is None and alias_version(client, NAME, CHAMPION) is None
    assert result.verdict == "passed, not promoted: data drift (intensity: p = 0.001 < alpha 0.01)"
    assert client.get_model_version(NAME, first).tags["gate.held_by"].startswith("data drift")
    # The command line: the same words, and its own exit status for a held version.
    out = CliRunner().invoke(app, ["gate", second, "--params", str(params)])
    assert out.exit_code == GATE_HELD == 4, out.output
    assert out.stdout.splitlines()[0] == f"{NAME} version {second}: {result.verdict}"


def test_the_gate_runs_the_drift_check_when_the_report_is_not_about_this_data(store, tmp_path, monkeypatch) -> None:
    """A stale report (other data, or another champion) is not trusted: the drift step runs again."""
    from cxr.registry import gate as gate_module

    client, add = store
    _, settings, paths = _drift_project(tmp_path, block=True)
    version = add()
    stale = _flagged_report(paths, champion="7")  # compared against a champion that is not the current one
    calls = []

    def check_again(s, p, uri):
        calls.append(uri)
        return type(stale)(status="checked", flagged=False, champion_version=None, data=stale.data)

    monkeypatch.setattr(gate_module, "drift", check_again)
    result = gate_module.gate(settings, paths, client, version)
    assert calls == [client.tracking_uri]
    assert result.held_by is None and result.promotion is not None
    # A report about this data and this champion is used as it is.
    _flagged_report(paths, champion=version)
    assert gate_module.drift_hold(settings, paths, client.tracking_uri, version).startswith("data drift")
    assert len(calls) == 1
