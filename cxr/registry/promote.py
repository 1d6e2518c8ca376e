"""Moving ``champion``: :func:`promote` (by the gate or by hand) and :func:`rollback`.

Both move the alias under :func:`cxr.registry.aliases.promotion_lock` and record who, when and why
(``promotion.*`` / ``rollback.*`` tags, the model's ``audit_log`` and ``champion_history``); the aliases, tags,
lock and their concurrency guarantees are :mod:`cxr.registry.aliases`'. Whether a version may be promoted is
decided in one place, :mod:`cxr.registry.gate`.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from cxr.ops.tracking import CHAMPION, PREVIOUS
from cxr.registry.aliases import (
    UNSET,
    ChampionChanged,
    DataSourceMismatch,
    GateRefused,
    PromotionError,
    alias_version,
    append_audit,
    champion_history,
    data_source_problem,
    get_version,
    json_list,
    model_label,
    promotion_lock,
    set_alias,
    set_champion_history,
    utc_now,
)

log = logging.getLogger(__name__)


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


def promote(
    client,
    name: str,
    version: str | int,
    reason: str,
    actor: str,
    expect_champion: str | None = UNSET,
    lock: bool = True,
    force: bool = False,
) -> Promotion:
    """Move ``champion`` to ``version`` (the old one kept as ``previous_champion``) and record who, when and why.

    ``expect_champion``: refuse (ChampionChanged) when the champion is no longer this version, e.g. when the
    gate compared against a champion that another promotion has since replaced. A version the gate refused
    is promoted only with ``force`` (GateRefused otherwise), and the promotion is recorded as forced.
    """
    version = str(version)
    where = model_label(name, version)
    if not reason or not reason.strip():
        raise PromotionError(f"{where}: a promotion needs a reason")
    if not actor or not actor.strip():
        raise PromotionError(f"{where}: a promotion needs an actor (who promotes)")
    mv = get_version(client, name, version)
    problem = data_source_problem(client, name, mv)
    if problem:
        raise DataSourceMismatch(problem)
    gate = (mv.tags or {}).get("gate.decision") or "not run"
    forced = gate == "reject"
    if forced and not force:
        reasons = json_list((mv.tags or {}).get("gate.reasons"))
        why = f": {reasons[0]}" + (f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else "") if reasons else ""
        raise GateRefused(f"{where}: the gate refused it{why}; promote it anyway with --force (recorded as forced)")
    with promotion_lock(client, name) if lock else contextlib.nullcontext():
        current = alias_version(client, name, CHAMPION)
        if expect_champion is not UNSET and current != expect_champion:
            raise ChampionChanged(
                f"{where}: the champion is now version {current}, not {expect_champion} as "
                "when the gate ran; run the gate again"
            )
        at = utc_now()
        if current == version:
            log.info("%s is already the champion", where)
            return Promotion(name, version, current, "promote", reason, actor, at, changed=False)
        if current is not None:
            set_alias(client, name, PREVIOUS, current)
        set_alias(client, name, CHAMPION, version)  # an upsert: the model is never without a champion
        for key, value in {
            "promotion.at": at,
            "promotion.by": actor,
            "promotion.reason": reason[:5000],
            "promotion.previous": current or "",
            "promotion.gate": gate,
            "promotion.forced": str(forced).lower(),
        }.items():
            client.set_model_version_tag(name, version, key, value)
        set_champion_history(client, name, [*champion_history(client, name), version])
        append_audit(
            client,
            name,
            {
                "event": "promote",
                "version": version,
                "previous": current,
                "actor": actor,
                "reason": reason,
                "at": at,
                **({"forced": True} if forced else {}),
            },
        )
    log.log(
        logging.WARNING if forced else logging.INFO,
        "%s promoted to champion (was %s) by %s%s: %s",
        where,
        current,
        actor,
        " against the gate's refusal (forced)" if forced else "",
        reason,
    )
    return Promotion(name, version, current, "promote", reason, actor, at)


def rollback(client, name: str, reason: str, actor: str = "unknown", lock: bool = True) -> Promotion:
    """Move ``champion`` back to ``previous_champion`` and record it; the one before becomes the new previous."""
    if not reason or not reason.strip():
        raise PromotionError(f"{model_label(name)}: a rollback needs a reason")
    with promotion_lock(client, name) if lock else contextlib.nullcontext():
        current = alias_version(client, name, CHAMPION)
        target = alias_version(client, name, PREVIOUS)
        if current is None:
            raise PromotionError(f"{model_label(name)}: has no champion to roll back")
        if target is None or target == current:
            raise PromotionError(
                f"{model_label(name, current)} is the champion and there is no previous champion to roll back to"
            )
        set_alias(client, name, CHAMPION, target)
        history = champion_history(client, name)
        while history and history[-1] == current:
            history.pop()
        if history and history[-1] == target:
            history.pop()
        earlier = [v for v in history if v not in (target, current)]
        if earlier:
            set_alias(client, name, PREVIOUS, earlier[-1])
        else:
            client.delete_registered_model_alias(name, PREVIOUS)
        set_champion_history(client, name, [*history, target])
        at = utc_now()
        for key, value in {
            "rollback.at": at,
            "rollback.by": actor,
            "rollback.reason": reason[:5000],
            "rollback.to": target,
        }.items():
            client.set_model_version_tag(name, current, key, value)
        client.set_model_version_tag(name, target, "promotion.restored_at", at)
        append_audit(
            client,
            name,
            {"event": "rollback", "version": target, "previous": current, "actor": actor, "reason": reason, "at": at},
        )
    log.info(
        "%s: champion rolled back from version %s to %s by %s: %s", model_label(name), current, target, actor, reason
    )
    return Promotion(name, target, current, "rollback", reason, actor, at)


__all__ = ["Promotion", "promote", "rollback"]
