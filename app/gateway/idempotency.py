"""Idempotency-Key on the audio endpoints: a retry gets the first call's answer, unbilled.

Stripe's semantics, scoped to the tenant key. The first call with a key claims it (an
insert the database lets only one process win) with a digest of its request (the audio
bytes and every form field). When it ends, its answer is kept for the retention period if
it was answered (2xx) or billed anyway (a failure charged for review: its refusal is kept,
so a retry is never billed again); a call that failed without a charge releases the key,
and a retry runs anew. A retry with the same key and request gets the kept status and
body with ``idempotent-replayed: true`` and no bill (the original's ledger row counts the
replay); with a different request, a 422 naming the key; while the first is running, or
its answer is being kept, a 409 with Retry-After (the SDKs wait and retry). A claim whose
call never opened (its process died) is taken over after ``_ORPHANED_AFTER``; one whose
call was billed but whose answer was not kept is refused, never run twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec
from litestar import Response
from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.envelope import error_response
from app.errors import EarmarkError, InvalidRequest
from app.gateway import cache
from app.storage import database
from app.storage.models import OPEN, idempotency_keys, ledger

HEADER = "idempotency-key"
REPLAYED_HEADER = "idempotent-replayed"
MAX_LENGTH = 255
# A claim with no ledger row this old was left by a process that died before opening it
# (admission, measuring included, never takes this long).
_ORPHANED_AFTER = timedelta(minutes=15)
# How long after its call ended a claim may still be having its answer kept.
_KEEPING = timedelta(seconds=60)


class Refused(EarmarkError):
    """A retry refused for its key's sake (not a call of its own: no ledger row)."""


class KeyReused(Refused):
    status_code = 422
    error_type = "invalid_request_error"


class KeyBusy(Refused):
    status_code = 409
    error_type = "conflict_error"


@dataclass(frozen=True, slots=True)
class Claim:
    """This call holds ``key`` for its tenant key: it keeps its answer, or releases it."""

    key_id: str
    key: str
    call_id: str


class Replayed(Exception):
    """The first call's kept answer, for this retry."""

    def __init__(self, response: Response[Any]) -> None:
        super().__init__("replayed")
        self.response = response


def checked(value: str | None) -> str | None:
    """The header's value, or a 400 if it is not 1-255 printable ASCII characters."""
    if value is None:
        return None
    if not 0 < len(value) <= MAX_LENGTH or not (value.isascii() and value.isprintable()):
        raise InvalidRequest(
            f"`Idempotency-Key` must be 1 to {MAX_LENGTH} printable ASCII characters.",
            param="Idempotency-Key",
        )
    return value


def request_digest(operation: str, fields: dict[str, list[str]], audio_sha256: str) -> str:
    material = msgspec.json.encode([operation, fields, audio_sha256], order="sorted")
    return hashlib.sha256(material).hexdigest()


def _insert(dialect: str) -> Any:
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(idempotency_keys)


async def claim(
    engine: AsyncEngine,
    *,
    key_id: str,
    key: str,
    digest: str,
    call_id: str,
    retention: timedelta,
    retry_after: int,
) -> Claim:
    """Claim ``key`` for this call, or raise: ``Replayed`` with the kept answer, 409 while
    the first call runs, 422 for a different request with the same key."""
    mine = Claim(key_id, key, call_id)
    this = (idempotency_keys.c.key_id == key_id, idempotency_keys.c.idempotency_key == key)
    shown = (
        idempotency_keys.c.request_digest,
        idempotency_keys.c.call_id,
        idempotency_keys.c.status,
        idempotency_keys.c.created_at,
    )
    for _ in range(3):  # a claim released between our insert and our read: insert again
        now = database.utcnow()
        async with database.write(engine) as conn:
            await conn.execute(
                delete(idempotency_keys).where(*this, idempotency_keys.c.expires_at <= now)
            )
            inserted = await conn.execute(
                _insert(conn.dialect.name)
                .values(
                    key_id=key_id,
                    idempotency_key=key,
                    request_digest=digest,
                    call_id=call_id,
                    status="in_progress",
                    created_at=now,
                    expires_at=now + retention,
                )
                .on_conflict_do_nothing()
            )
            if inserted.rowcount == 1:
                return mine
            found = (await conn.execute(select(*shown).where(*this))).first()
            if found is None:
                continue
            if found.request_digest != digest:
                raise KeyReused(
                    f"Idempotency-Key {key!r} was used for a different request (other audio "
                    f"or fields) within the last {retention.total_seconds() / 3600:g} h; use "
                    "a new key for a new request.",
                    param="Idempotency-Key",
                    code="idempotency_key_reused",
                )
            if found.status != "done":
                await _take_over(conn, found, mine, now, retention, retry_after)
                return mine
            await conn.execute(
                update(ledger)
                .where(ledger.c.id == found.call_id)
                .values(replays=ledger.c.replays + 1)
            )
            kept = (
                await conn.execute(
                    select(
                        idempotency_keys.c.response_status,
                        idempotency_keys.c.content_type,
                        idempotency_keys.c.body,
                    ).where(*this)
                )
            ).one()
        # Raised once the replay's count is committed.
        headers = {REPLAYED_HEADER: "true", cache.HEADER: "miss"}
        if kept.response_status >= 400:
            headers["x-should-retry"] = "false"  # the same refusal, whatever the retry
        raise Replayed(
            Response(
                kept.body,
                status_code=kept.response_status,
                media_type=kept.content_type,
                headers=headers,
            )
        )
    raise KeyBusy(
        f"Idempotency-Key {key!r} is being claimed and released by other calls; retry.",
        param="Idempotency-Key",
        code="idempotency_key_in_use",
        headers={"retry-after": str(retry_after), "x-should-retry": "true"},
    )


async def _take_over(
    conn: AsyncConnection,
    found: Any,
    mine: Claim,
    now: datetime,
    retention: timedelta,
    retry_after: int,
) -> None:
    """Run this call instead of ``found``'s if that one ended unbilled or never opened;
    else raise: 409 while it runs or its answer is being kept, or for good if it was
    billed and its answer lost."""
    busy = KeyBusy(
        f"A call with Idempotency-Key {mine.key!r} is still running; retry after "
        f"{retry_after} s to get its answer.",
        param="Idempotency-Key",
        code="idempotency_key_in_use",
        headers={"retry-after": str(retry_after), "x-should-retry": "true"},
    )
    first = (
        await conn.execute(
            select(ledger.c.status, ledger.c.cost_nanos, ledger.c.completed_at).where(
                ledger.c.id == found.call_id
            )
        )
    ).first()
    if first is None:
        if now - found.created_at < _ORPHANED_AFTER:
            raise busy
    elif first.status in OPEN:
        raise busy
    elif first.cost_nanos:
        if first.completed_at is None or now - first.completed_at < _KEEPING:
            raise busy
        raise KeyBusy(
            f"The call with Idempotency-Key {mine.key!r} ({found.call_id}) was billed, but "
            "its answer could not be kept; it is not run again. Use a new key to run it "
            "again.",
            param="Idempotency-Key",
            code="idempotency_key_answer_lost",
            headers={"x-should-retry": "false"},
        )
    taken = await conn.execute(
        update(idempotency_keys)
        .where(*_held(Claim(mine.key_id, mine.key, found.call_id)))
        .values(call_id=mine.call_id, created_at=now, expires_at=now + retention)
    )
    if taken.rowcount != 1:  # another retry took it over first
        raise busy


async def finish(
    engine: AsyncEngine, claim: Claim, outcome: Response[Any] | EarmarkError | None
) -> None:
    """At the end of the claiming call: keep its answer if it was answered, or its refusal
    if it was billed anyway; release the key if nothing was billed. A billed call with
    nothing to keep (it was cancelled) leaves the claim: a retry is refused, not billed."""
    if isinstance(outcome, Response) and 200 <= outcome.status_code < 300:
        await _keep(engine, claim, outcome)
        return
    async with database.read(engine) as conn:
        charged = await conn.scalar(select(ledger.c.cost_nanos).where(ledger.c.id == claim.call_id))
    if not charged:
        await _release(engine, claim)
    elif isinstance(outcome, EarmarkError):
        await _keep(
            engine,
            claim,
            error_response(
                outcome.status_code,
                outcome.message,
                error_type=outcome.error_type,
                param=outcome.param,
                code=outcome.code,
            ),
        )
    elif outcome is not None:
        await _keep(engine, claim, outcome)


async def _keep(engine: AsyncEngine, claim: Claim, response: Response[Any]) -> None:
    content = response.content
    body = content if isinstance(content, bytes) else msgspec.json.encode(content)
    async with database.write(engine) as conn:
        await conn.execute(
            update(idempotency_keys)
            .where(*_held(claim))
            .values(
                status="done",
                response_status=response.status_code,
                content_type=str(response.media_type or "application/json"),
                body=body,
            )
        )


async def _release(engine: AsyncEngine, claim: Claim) -> None:
    async with database.write(engine) as conn:
        await conn.execute(
            delete(idempotency_keys).where(
                *_held(claim), idempotency_keys.c.status == "in_progress"
            )
        )


def _held(claim: Claim) -> tuple[Any, ...]:
    return (
        idempotency_keys.c.key_id == claim.key_id,
        idempotency_keys.c.idempotency_key == claim.key,
        idempotency_keys.c.call_id == claim.call_id,
    )


async def purge_expired(engine: AsyncEngine, now: datetime | None = None) -> int:
    return await database.delete_expired(engine, idempotency_keys, now)
