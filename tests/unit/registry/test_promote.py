"""Moving ``champion`` against a local sqlite MLflow store: manual promotion and rollback, the data-source and
champion checks, two promoters at once, and forcing a version the gate refused."""

from __future__ import annotations

import threading

import pytest
from registry_support import (
    CFG,
    NAME,
    empty_db_fixture,  # noqa: F401 - the fixture empty_db, which store needs
    store_fixture,  # noqa: F401 - the fixture store
)

from cxr.ops.tracking import CHAMPION, PREVIOUS
from cxr.registry.aliases import (
    ChampionChanged,
    DataSourceMismatch,
    GateRefused,
    PromotionError,
    alias_version,
    audit_log,
    champion_history,
)
from cxr.registry.gate import evaluate_gate, register_challenger
from cxr.registry.promote import promote, rollback


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
