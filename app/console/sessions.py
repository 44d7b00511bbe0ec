"""Console sign-ins: a random token in an HttpOnly cookie, its SHA-256 in ``console_sessions``.

A session ends at sign-out, after ``idle_minutes`` without a page, ``session_hours``
after sign-in however active, and as soon as the credential it was opened with changes
(a new password, a deleted user, a new admin token). Rows live in the database, so every
process behind a balancer knows every session and a sign-out ends it everywhere at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.settings import Console
from app.storage import database
from app.storage.models import admin_users, console_sessions

MAX_TOKEN_LENGTH = 100  # a cookie longer than any token we issue is not looked up
_TOUCH_EVERY = timedelta(seconds=60)  # ``seen_at`` is written at most once a minute


class Session(msgspec.Struct, frozen=True, kw_only=True):
    id: str  # the token's digest
    admin: str  # "token" or "user:NAME": the audit trail's actor
    csrf: str
    created_at: datetime
    seen_at: datetime


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def _credential(conn: AsyncConnection, admin: str, admin_token: str | None) -> str | None:
    """A digest of what ``admin`` signs in with now; None if it can no longer sign in."""
    if admin == "token":
        return _digest(f"token:{admin_token}") if admin_token else None
    stored = await conn.scalar(
        select(admin_users.c.password_hash).where(admin_users.c.name == admin[len("user:") :])
    )
    return _digest(f"user:{stored}") if stored else None


def _expired(limits: Console, now: datetime) -> Any:
    return or_(
        console_sessions.c.created_at <= now - timedelta(hours=limits.session_hours),
        console_sessions.c.seen_at <= now - timedelta(minutes=limits.idle_minutes),
    )


async def open_session(
    engine: AsyncEngine, admin: str, admin_token: str | None, limits: Console
) -> tuple[str, Session] | None:
    """A new session for ``admin``, who just signed in: the cookie's token, and the row
    (None if the user was deleted meanwhile). Expired sessions are cleared on the way."""
    token, now = secrets.token_urlsafe(32), database.utcnow()
    async with database.write(engine) as conn:
        await conn.execute(delete(console_sessions).where(_expired(limits, now)))
        credential = await _credential(conn, admin, admin_token)
        if credential is None:
            return None
        csrf = secrets.token_urlsafe(32)
        session = Session(id=_digest(token), admin=admin, csrf=csrf, created_at=now, seen_at=now)
        await conn.execute(
            insert(console_sessions).values(
                **msgspec.structs.asdict(session), credential=credential
            )
        )
    return token, session


async def find(
    engine: AsyncEngine, token: str | None, admin_token: str | None, limits: Console
) -> Session | None:
    """The live session this cookie token opens, or None (unknown, ended or expired)."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    now = database.utcnow()
    async with database.read(engine) as conn:
        row = (
            await conn.execute(
                select(console_sessions).where(
                    console_sessions.c.id == _digest(token),
                    ~_expired(limits, now),
                )
            )
        ).first()
        if row is None:
            return None
        credential = await _credential(conn, row.admin, admin_token)
    if credential is None or not hmac.compare_digest(credential, row.credential):
        await close(engine, row.id)  # its password or the token changed: it never opens again
        return None
    if now - row.seen_at >= _TOUCH_EVERY:
        async with database.write(engine) as conn:
            await conn.execute(
                update(console_sessions).where(console_sessions.c.id == row.id).values(seen_at=now)
            )
    return Session(
        id=row.id, admin=row.admin, csrf=row.csrf, created_at=row.created_at, seen_at=now
    )


async def close(engine: AsyncEngine, session_id: str) -> None:
    async with database.write(engine) as conn:
        await conn.execute(delete(console_sessions).where(console_sessions.c.id == session_id))
