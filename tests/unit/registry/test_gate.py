"""The promotion gate against a local sqlite MLflow store: floors, the comparison with the champion on the same
or a re-scored split, the drift hold, and ``cxr gate``'s exit status."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from conftest import label_reading_model
from registry_support import (
    CFG,
    NAME,
    empty_db_fixture,  # noqa: F401 - the fixture empty_db, which store needs
    store_fixture,  # noqa: F401 - the fixture store
)

from cxr.ops.tracking import CHALLENGER, CHAMPION, PREVIOUS
from cxr.registry.aliases import alias_version, audit_log
from cxr.registry.gate import evaluate_gate, register_challenger
from cxr.registry.promote import promote

CLASSES = ("COVID", "Normal")


N_TEST = 200


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
