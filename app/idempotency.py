"""Idempotency-Key on the audio endpoints: a retry gets the first call's answer, unbilled.

Stripe's semantics, scoped to the tenant key. The first call with a key claims it (an
insert the database lets only one process win) with a digest of its request (the audio
bytes and every form field); when it is answered (2xx), the answer is kept for the
retention period and the claim is ``done``. A later call with the same key and the same
request gets that answer with ``idempotent-replayed: true`` and no bill (the original's
ledger row counts the replay); with a different request, a 422 naming the key. While the
first is still running, a retry gets 409 with Retry-After (the SDKs wait and retry). If
the first fails, its claim is released and a retry runs anew. A claim whose call ended
without keeping an answer (its process died) is taken over, unless that call was billed:
then a retry is refused rather than billed twice.
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

from app import cache, database
from app.errors import EarmarkError, InvalidRequest
from app.models import OPEN, idempotency_keys, ledger

HEADER = "idempotency-key"
REPLAYED_HEADER = "idempotent-replayed"
MAX_LENGTH = 255
# A claim with no ledger row this old was left by a process that died before opening it.
_ORPHANED_AFTER = timedelta(seconds=60)
_BILLED = ("succeeded", "interrupted", "expired")


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


def request_digest(endpoint: str, fields: dict[str, list[str]], audio_sha256: str) -> str:
    material = msgspec.json.encode([endpoint, fields, audio_sha256], order="sorted")
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
    now = database.utcnow()
    mine = Claim(key_id, key, call_id)
    this = (idempotency_keys.c.key_id == key_id, idempotency_keys.c.idempotency_key == key)
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
        found = (await conn.execute(select(idempotency_keys).where(*this))).one()
        if found.request_digest != digest:
            raise KeyReused(
                f"Idempotency-Key {key!r} was used for a different request (other audio or "
                f"fields) within the last {retention.total_seconds() / 3600:g} h; use a new "
                "key for a new request.",
                param="Idempotency-Key",
                code="idempotency_key_reused",
            )
        if found.status == "done":
            await conn.execute(
                update(ledger)
                .where(ledger.c.id == found.call_id)
                .values(replays=ledger.c.replays + 1)
            )
        else:
            await _take_over(conn, found, mine, now, retry_after)
            return mine
    # Raised once the replay's count is committed.
    raise Replayed(
        Response(
            found.body,
            status_code=200,
            media_type=found.content_type,
            headers={REPLAYED_HEADER: "true", cache.HEADER: "miss"},
        )
    )


async def _take_over(
    conn: AsyncConnection, found: Any, mine: Claim, now: datetime, retry_after: int
) -> None:
    """Run this call instead of ``found``'s if that one failed or never ran; else raise."""
    first = (
        await conn.execute(select(ledger.c.status).where(ledger.c.id == found.call_id))
    ).first()
    running = first.status in OPEN if first else now - found.created_at < _ORPHANED_AFTER
    if running:
        raise KeyBusy(
            f"A call with Idempotency-Key {mine.key!r} is still running; retry after "
            f"{retry_after} s to get its answer.",
            param="Idempotency-Key",
            code="idempotency_key_in_use",
            headers={"retry-after": str(retry_after), "x-should-retry": "true"},
        )
    if first and first.status in _BILLED:
        raise KeyBusy(
            f"The call with Idempotency-Key {mine.key!r} ({found.call_id}) was answered and "
            "billed, but its answer could not be kept; it is not run again. Use a new key to "
            "run it again.",
            param="Idempotency-Key",
            code="idempotency_key_answer_lost",
            headers={"x-should-retry": "false"},
        )
    await conn.execute(
        update(idempotency_keys)
        .where(*_held(Claim(mine.key_id, mine.key, found.call_id)))
        .values(call_id=mine.call_id, created_at=now)
    )


async def keep(engine: AsyncEngine, claim: Claim, response: Response[Any]) -> None:
    """Keep the call's answer for its retries; the claim is done."""
    async with database.write(engine) as conn:
        await conn.execute(
            update(idempotency_keys)
            .where(*_held(claim))
            .values(status="done", content_type=response.media_type, body=response.content)
        )


async def release(engine: AsyncEngine, claim: Claim) -> None:
    """The call failed: a retry with the key runs anew."""
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
    async with database.write(engine) as conn:
        removed = await conn.execute(
            delete(idempotency_keys).where(
                idempotency_keys.c.expires_at <= (now or database.utcnow())
            )
        )
    return removed.rowcount
