"""Registry bookkeeping: aliases, tags, the audit log, champion history, the promotion lock and data sources.

Aliases on the registered model (``base.model_name``):

- ``challenger``: the newest version put through the gate;
- ``champion``: the version to serve (``models:/<name>@champion``);
- ``previous_champion``: the champion before the last promotion, the target of a rollback.

Decisions are recorded as tags: on the version and on the registered model (``audit_log``, a bounded JSON list
of events, and ``champion_history``, the bounded list of champion versions in promotion order).

Concurrency. ``set_registered_model_alias`` is an upsert, so ``champion`` is moved, never deleted and re-set:
whatever interleaving of promotions happens, the model ends with exactly one champion, one of the versions
promoted. Promotions and rollbacks also take :func:`promotion_lock` around their read-modify-write of aliases
and tags: a PostgreSQL advisory lock when the registry URI is a ``postgresql://`` database, otherwise an
exclusive file lock in the temporary folder keyed by registry URI and model name (which serialises every
promoter on this machine). The MLflow REST API offers no lock, so between machines sharing one HTTP server
the guarantee is the upsert's: one champion at the end (the last writer's), ``previous_champion`` set to a
former champion, and in the worst case one lost entry of the model's ``audit_log`` (the versions' own
``promotion.*`` tags are never lost).
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


SYNTHETIC = "synthetic"


AUDIT_TAG = "audit_log"


HISTORY_TAG = "champion_history"


#: Registered-model tag values are VARCHAR(5000) in MLflow's SQL schema.
MAX_MODEL_TAG_CHARS = 5000


MAX_AUDIT_ENTRIES = 50


MAX_HISTORY = 50


LOCK_TIMEOUT_S = 120.0


UPSERT_ATTEMPTS = 5


UNSET: Any = object()  # "not given", where None is a meaningful value


# A first-time upsert that lost a race hits the row the winner inserted: MLflow's SQL store reports the
# IntegrityError as BAD_REQUEST with the database's message (sqlite "UNIQUE constraint failed", PostgreSQL
# "UniqueViolation ... duplicate key", MySQL "IntegrityError ... Duplicate entry"); a locked or unreachable
# database is TEMPORARILY_UNAVAILABLE. Anything else (no such model, invalid value, denied) is deterministic.
_COLLISION = re.compile(r"integrity|unique|duplicate", re.IGNORECASE)


class PromotionError(RuntimeError):
    """A promotion or rollback that cannot be done; the message names the model and version."""


class DataSourceMismatch(PromotionError):
    """A version trained on another data source than the registered model is meant for."""


class ChampionChanged(PromotionError):
    """The champion moved between the gate's evaluation and the promotion it allowed."""


class GateRefused(PromotionError):
    """A manual promotion of a version the gate refused, without ``force``."""


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (the format of every recorded ``*.at`` tag)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def model_label(name: str, version: str | int | None = None) -> str:
    """How messages name a registered model, or one of its versions."""
    return f"model {name!r}" if version is None else f"model {name!r} version {version}"


def get_version(client, name: str, version: str | int):
    """A model version, or PromotionError naming it when the registry has no such version."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as err:
        raise PromotionError(f"{model_label(name, version)}: not found in the registry ({err.message})") from None


def alias_version(client, name: str, alias: str) -> str | None:
    """The version an alias points to, or None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _transient(err: BaseException) -> bool:
    """Whether a registry write failed on a colliding first-time upsert or a busy database (worth a retry)."""
    from mlflow.exceptions import MlflowException

    if not isinstance(err, MlflowException):
        return False
    if err.error_code == "TEMPORARILY_UNAVAILABLE":
        return True
    return err.error_code == "BAD_REQUEST" and bool(_COLLISION.search(err.message or ""))


def upsert(fn: Callable[..., Any], *args: Any) -> None:
    """Run a registry upsert, retried on collisions: MLflow's upserts read then insert, so two first-time writes
    of one alias or model tag can collide on its primary key; the retry finds the row and updates it."""
    from tenacity import retry, retry_if_exception, stop_after_attempt, wait_incrementing

    retry(
        retry=retry_if_exception(_transient),
        stop=stop_after_attempt(UPSERT_ATTEMPTS),
        wait=wait_incrementing(start=0.1, increment=0.1),
        reraise=True,
    )(fn)(*args)


def set_alias(client, name: str, alias: str, version: str) -> None:
    """Point an alias at a version (an upsert: the alias is never absent in between)."""
    upsert(client.set_registered_model_alias, name, alias, str(version))


def set_model_tag(client, name: str, key: str, value: str) -> None:
    """Set a registered-model tag (an upsert)."""
    upsert(client.set_registered_model_tag, name, key, value)


def json_tag(value: Any, limit: int = 20000) -> str:
    """A value as a JSON tag, cut to ``limit`` characters (marked by ``...``)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_list(text: str | None) -> list:
    """A JSON list tag's value; an empty list when the tag is absent or not a JSON list."""
    try:
        value = json.loads(text) if text else []
    except json.JSONDecodeError:
        return []
    return value if isinstance(value, list) else []


def model_tags(client, name: str) -> dict[str, str]:
    """The registered model's tags."""
    return dict(client.get_registered_model(name).tags or {})


def append_audit(client, name: str, entry: dict[str, Any]) -> None:
    """Add an event to the model's ``audit_log`` tag, dropping the oldest to stay within the tag size limit."""
    entry = {**entry, "reason": str(entry.get("reason", ""))[:500]}
    events = [*json_list(model_tags(client, name).get(AUDIT_TAG)), entry][-MAX_AUDIT_ENTRIES:]
    text = json.dumps(events, sort_keys=True)
    while len(text) > MAX_MODEL_TAG_CHARS and len(events) > 1:
        events = events[1:]
        text = json.dumps(events, sort_keys=True)
    set_model_tag(client, name, AUDIT_TAG, text)


def audit_log(client, name: str) -> list[dict[str, Any]]:
    """The recorded promotions and rollbacks of a registered model, oldest first."""
    return json_list(model_tags(client, name).get(AUDIT_TAG))


def champion_history(client, name: str) -> list[str]:
    """Champion versions in promotion order (rollbacks remove the rolled-back tail)."""
    return [str(v) for v in json_list(model_tags(client, name).get(HISTORY_TAG))]


def set_champion_history(client, name: str, history: list[str]) -> None:
    """Record the champion history, keeping the newest ``MAX_HISTORY`` versions."""
    set_model_tag(client, name, HISTORY_TAG, json.dumps(history[-MAX_HISTORY:]))


def registry_uri(client) -> str:
    """The registry URI a client writes to (its tracking URI unless a separate registry was given)."""
    return str(getattr(client, "_registry_uri", None) or client.tracking_uri)


@contextlib.contextmanager
def promotion_lock(client, name: str, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[str]:
    """Serialise promotions of one model: a PostgreSQL advisory lock, else a local file lock; yields its kind."""
    uri = registry_uri(client)
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
    from filelock import FileLock, Timeout

    path = Path(tempfile.gettempdir()) / f"cxr-promote-{key.hex()[:24]}.lock"
    # thread_local=False: one lock object per call, so two threads of one process exclude each other too.
    lock = FileLock(path, timeout=timeout_s, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise PromotionError(f"{model_label(name)}: another promotion held {path} for over {timeout_s:.0f} s") from None
    try:
        yield "file"
    finally:
        lock.release()


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


def model_data_source(client, name: str) -> str | None:
    """The registered model's ``data_source`` tag; set from its first version's tag when absent."""
    tags = model_tags(client, name)
    if tags.get("data_source"):
        return tags["data_source"]
    quoted = name.replace("'", "\\'")
    versions = client.search_model_versions(f"name='{quoted}'")
    if not versions:
        return None
    first = min(versions, key=lambda mv: int(mv.version))
    source = (first.tags or {}).get("data_source")
    if source:
        set_model_tag(client, name, "data_source", source)
        log.info("%s: data_source set to %r from version %s", model_label(name), source, first.version)
    return source or None


def data_source_problem(client, name: str, mv, model_source: str | None = UNSET) -> str | None:
    """Why a version may not be champion of this model because of its data source, or None."""
    if model_source is UNSET:
        model_source = model_data_source(client, name)
    if model_source is None or model_source == SYNTHETIC:
        return None
    version_source = (mv.tags or {}).get("data_source") or "unknown"
    if version_source != model_source:
        return (
            f"{model_label(name, mv.version)} was trained on {version_source!r} data but the registered model "
            f"is for {model_source!r} data: it cannot become champion"
        )
    return None
