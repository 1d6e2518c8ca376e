"""Aliases, audit and the lock: the bounded audit log, the promotion lock, the actor, retried upserts."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from registry_support import (
    NAME,
    empty_db_fixture,  # noqa: F401 - the fixture empty_db, which store needs
    store_fixture,  # noqa: F401 - the fixture store
)

from cxr.ops.tracking import CHAMPION
from cxr.registry.aliases import PromotionError, alias_version, audit_log, promotion_lock
from cxr.registry.promote import promote


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
