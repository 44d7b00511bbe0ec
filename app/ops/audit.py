"""The audit trail: every admin change, written in the transaction that makes it.

A service that changes tenants, keys, budgets or admin users calls ``record`` inside its
write transaction, with the ``Actor`` its caller names (the admin API's guard, or the
CLI's OS user), so a change and its row commit or roll back together. A row holds the
fields that changed, before and after, as the admin API shows them: the API never shows
a secret or a digest, so neither does the trail. Nothing updates or deletes a row.
"""

from __future__ import annotations

import csv
import io
import os
import pwd
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.ids import new_id
from app.pagination import MAX_LIMIT, paginate, split_page
from app.schemas import AuditEntry, AuditPage
from app.storage import database
from app.storage.models import audit_log


class Actor(msgspec.Struct, frozen=True):
    """Who made a change, and from where."""

    name: str  # token | user:NAME | cli:OS_USER
    request_id: str | None = None
    source: str | None = None  # the client's address


def cli_actor() -> Actor:
    """The CLI acts as the operating-system user running it: the account of its user id,
    not $USER (which a caller sets to anything)."""
    try:
        name = pwd.getpwuid(os.geteuid()).pw_name
    except (KeyError, OSError):
        return Actor("cli")
    return Actor(f"cli:{name[:100]}")


# Changed on every write: not a change of its own.
_UNTRACKED = frozenset({"updated_at"})


def _changed(
    before: dict[str, Any] | None, after: dict[str, Any] | None
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The fields that differ (all of them when one side is missing)."""
    if before is None or after is None:
        return before, after
    names = sorted(
        name
        for name in before.keys() | after.keys()
        if name not in _UNTRACKED and before.get(name) != after.get(name)
    )
    return {n: before.get(n) for n in names}, {n: after.get(n) for n in names}


async def record(
    conn: AsyncConnection,
    actor: Actor,
    action: str,
    target_id: str,
    *,
    before: Any = None,
    after: Any = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Write one row for ``action`` (``TYPE.VERB``) on ``target_id``: ``before`` and
    ``after`` are the target as the API shows it (None where it did not or no longer
    exists), of which only the changed fields are kept."""
    old, new = _changed(
        None if before is None else msgspec.to_builtins(before),
        None if after is None else msgspec.to_builtins(after),
    )
    await conn.execute(
        audit_log.insert().values(
            id=new_id("aud"),
            created_at=database.utcnow(),
            actor=actor.name,
            action=action,
            target_type=action.split(".", 1)[0],
            target_id=target_id,
            before=old,
            after=new,
            details=details,
            request_id=actor.request_id,
            source=actor.source,
        )
    )


async def list_entries(
    engine: AsyncEngine,
    *,
    target: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int,
    cursor: str | None = None,
) -> AuditPage:
    """Rows newest first, each filter an exact match (``from`` inclusive, ``to`` not)."""
    query = select(audit_log)
    for column, value in (
        (audit_log.c.target_id, target),
        (audit_log.c.actor, actor),
        (audit_log.c.action, action),
    ):
        if value is not None:
            query = query.where(column == value)
    if start is not None:
        query = query.where(audit_log.c.created_at >= start)
    if end is not None:
        query = query.where(audit_log.c.created_at < end)
    async with database.read(engine) as conn:
        rows = (await conn.execute(paginate(query, audit_log.c.id, limit, cursor))).all()
    page, next_cursor = split_page(rows, limit, lambda row: row.id)
    return AuditPage(data=[_to_api(row) for row in page], next_cursor=next_cursor)


async def every_entry(
    engine: AsyncEngine, *, cursor: str | None = None, at_most: int | None = None, **filters: Any
) -> list[AuditEntry]:
    """Every row ``list_entries`` would page through from ``cursor`` on (the first
    ``at_most`` of them), newest first: what a CSV export holds."""
    entries: list[AuditEntry] = []
    while at_most is None or len(entries) < at_most:
        page = await list_entries(engine, **filters, limit=MAX_LIMIT, cursor=cursor)
        entries += page.data
        cursor = page.next_cursor
        if cursor is None:
            break
    return entries[:at_most]


async def for_target(engine: AsyncEngine, target_id: str) -> list[AuditEntry]:
    """Every row about one target, oldest first."""
    query = select(audit_log).where(audit_log.c.target_id == target_id).order_by(audit_log.c.id)
    async with database.read(engine) as conn:
        return [_to_api(row) for row in (await conn.execute(query)).all()]


def _to_api(row: Any) -> AuditEntry:
    return AuditEntry(
        id=row.id,
        created_at=row.created_at,
        actor=row.actor,
        action=row.action,
        target_type=row.target_type,
        target_id=row.target_id,
        before=row.before,
        after=row.after,
        details=row.details,
        request_id=row.request_id,
        source=row.source,
    )


CSV_COLUMNS = tuple(AuditEntry.__struct_fields__)
_JSON_COLUMNS = ("before", "after", "details")


def to_csv(entries: list[AuditEntry]) -> str:
    """One header line, then a row per entry, the JSON columns as JSON text (so every cell
    starts with an id, a time, a name Earmark wrote or ``{``: none is a formula)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for entry in entries:
        values = msgspec.to_builtins(entry)
        for name in _JSON_COLUMNS:
            values[name] = (
                "" if values[name] is None else msgspec.json.encode(values[name]).decode()
            )
        writer.writerow(values[name] for name in CSV_COLUMNS)
    return out.getvalue()
