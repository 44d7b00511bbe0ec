"""Virtual key lifecycle: create, list, read, update, revoke, rotate, delete.

The secret exists only in the creation or rotation response; the database keeps a keyed
digest per secret (``key_secrets``) so that rotation can keep the old secret alive for a
grace period without ever storing it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.access import key_format
from app.access.tenants import fetch_tenant
from app.billing import budgets
from app.errors import Conflict, InvalidRequest, NotFound
from app.ids import new_id
from app.ops import audit, webhooks
from app.ops.audit import Actor
from app.pagination import paginate, split_page
from app.schemas import (
    Key,
    KeyCreate,
    KeyPage,
    KeyStatus,
    KeyUpdate,
    KeyWithSecret,
    RateLimits,
    provided,
)
from app.storage import database
from app.storage.models import api_keys, key_secrets

_visible = api_keys.c.deleted_at.is_(None)
LATEST_EXPIRY = datetime(9000, 1, 1, tzinfo=UTC)


def key_status(
    revoked_at: datetime | None, expires_at: datetime | None, now: datetime
) -> KeyStatus:
    if revoked_at is not None:
        return "revoked"
    if expires_at is not None and expires_at <= now:
        return "expired"
    return "active"


def stored_rate_limits(value: dict[str, Any] | None) -> RateLimits | None:
    return None if value is None else msgspec.convert(value, RateLimits)


def _status_filter(status: KeyStatus, now: datetime) -> Any:
    not_revoked = api_keys.c.revoked_at.is_(None)
    if status == "revoked":
        return api_keys.c.revoked_at.is_not(None)
    if status == "expired":
        return and_(not_revoked, api_keys.c.expires_at <= now)
    return and_(not_revoked, or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > now))


def _to_api(row: Any, now: datetime) -> Key:
    return Key(
        id=row.id,
        tenant_id=row.tenant_id,
        name=row.name,
        display_prefix=row.display_prefix,
        status=key_status(row.revoked_at, row.expires_at, now),
        metadata=row.metadata,
        allowed_models=row.allowed_models,
        rate_limits=stored_rate_limits(row.rate_limits),
        cache=row.cache,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        rotated_at=row.rotated_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _check_expiry(expires_at: datetime | None, now: datetime) -> None:
    if expires_at is None:
        return
    try:
        in_range = expires_at.astimezone(UTC) < LATEST_EXPIRY
    except OverflowError:  # 9999-12-31T23:00:00-05:00 is in the year 10000 in UTC
        in_range = False
    if not in_range:
        raise InvalidRequest("expires_at must be before 9000-01-01T00:00:00Z", param="expires_at")
    if expires_at <= now:
        raise InvalidRequest("expires_at must be in the future", param="expires_at")


async def _fetch(conn: AsyncConnection, key_id: str) -> Any:
    row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id, _visible))).first()
    if row is None:
        raise NotFound(f"no key with id {key_id!r}", code="key_not_found")
    return row


async def _store_secret(
    conn: AsyncConnection, key_id: str, secret: str, pepper: str, now: datetime
) -> None:
    await conn.execute(
        insert(key_secrets).values(
            digest=key_format.digest(secret, pepper),
            key_id=key_id,
            created_at=now,
            valid_until=None,
        )
    )


async def create_key(
    engine: AsyncEngine, pepper: str, data: KeyCreate, actor: Actor
) -> KeyWithSecret:
    now = database.utcnow()
    _check_expiry(data.expires_at, now)
    key_id = new_id("key")
    secret = key_format.generate()
    async with database.write(engine) as conn:
        tenant = await fetch_tenant(conn, data.tenant_id, param="tenant_id")
        if tenant.status != "active":
            raise Conflict(
                f"tenant {data.tenant_id!r} is inactive; reactivate it before issuing keys",
                param="tenant_id",
                code="tenant_inactive",
            )
        await conn.execute(
            insert(api_keys).values(
                id=key_id,
                tenant_id=data.tenant_id,
                name=data.name,
                display_prefix=key_format.display_prefix(secret),
                metadata=data.metadata,
                allowed_models=data.allowed_models,
                rate_limits=msgspec.to_builtins(data.rate_limits),
                cache=data.cache,
                expires_at=data.expires_at,
                created_at=now,
                updated_at=now,
            )
        )
        await _store_secret(conn, key_id, secret, pepper, now)
        created = _to_api(await _fetch(conn, key_id), now)
        await audit.record(conn, actor, "key.create", key_id, after=created)
        await webhooks.emit(conn, "key.created", created.tenant_id, {"key": created})
        budget_ids = [
            await budgets.add_budget(conn, budget, actor, key_id=key_id) for budget in data.budgets
        ]
    return KeyWithSecret(
        **msgspec.structs.asdict(created),
        secret=secret,
        budgets=[await budgets.get_budget(engine, budget_id) for budget_id in budget_ids],
    )


async def list_keys(
    engine: AsyncEngine,
    *,
    tenant_id: str | None,
    status: KeyStatus | None,
    limit: int,
    cursor: str | None,
    name: str | None = None,
) -> KeyPage:
    """Keys newest first; ``name`` matches any part of a key's name, in any case."""
    now = database.utcnow()
    query = select(api_keys).where(_visible)
    if tenant_id:
        query = query.where(api_keys.c.tenant_id == tenant_id)
    if name:
        query = query.where(func.lower(api_keys.c.name).contains(name.lower(), autoescape=True))
    if status:
        query = query.where(_status_filter(status, now))
    async with database.read(engine) as conn:
        rows = (await conn.execute(paginate(query, api_keys.c.id, limit, cursor))).all()
    page, next_cursor = split_page(rows, limit, lambda row: row.id)
    return KeyPage(data=[_to_api(row, now) for row in page], next_cursor=next_cursor)


async def get_key(engine: AsyncEngine, key_id: str) -> Key:
    async with database.read(engine) as conn:
        return _to_api(await _fetch(conn, key_id), database.utcnow())


async def check_existed(engine: AsyncEngine, key_id: str) -> None:
    """404 unless the key exists or existed: a deleted key's history stays readable."""
    async with database.read(engine) as conn:
        found = (await conn.execute(select(api_keys.c.id).where(api_keys.c.id == key_id))).first()
    if found is None:
        raise NotFound(f"no key with id {key_id!r}", code="key_not_found")


async def update_key(engine: AsyncEngine, key_id: str, data: KeyUpdate, actor: Actor) -> Key:
    now = database.utcnow()
    changes = provided(data)
    _check_expiry(changes.get("expires_at"), now)  # type: ignore[arg-type]
    if "rate_limits" in changes:
        changes["rate_limits"] = msgspec.to_builtins(changes["rate_limits"])
    if "expires_at" in changes:
        changes["expiry_announced"] = False  # a new expiry is announced when it comes
    return await _change(engine, key_id, changes, now, actor, "update")


async def revoke_key(engine: AsyncEngine, key_id: str, actor: Actor) -> Key:
    """Effective on the next request on every process: keys are looked up on every call."""
    now = database.utcnow()
    changes = {"revoked_at": func.coalesce(api_keys.c.revoked_at, now)}
    return await _change(engine, key_id, changes, now, actor, "revoke")


async def _change(
    engine: AsyncEngine,
    key_id: str,
    changes: dict[str, Any],
    now: datetime,
    actor: Actor,
    verb: str,
) -> Key:
    async with database.write(engine) as conn:
        before = _to_api(await _fetch(conn, key_id), now)
        if changes:
            await conn.execute(
                update(api_keys).where(api_keys.c.id == key_id).values(**changes, updated_at=now)
            )
        after = _to_api(await _fetch(conn, key_id), now)
        await audit.record(conn, actor, f"key.{verb}", key_id, before=before, after=after)
        if before.revoked_at is None and after.revoked_at is not None:
            await webhooks.emit(conn, "key.revoked", after.tenant_id, {"key": after})
        return after


async def announce_expired(engine: AsyncEngine) -> int:
    """Send key.expired for keys whose expiry has passed since it was last announced (the
    sweeper calls this on every process; the update hands each key to one of them)."""
    now = database.utcnow()
    async with database.write(engine) as conn:
        expired = (
            await conn.execute(
                update(api_keys)
                .where(
                    api_keys.c.expires_at <= now,
                    api_keys.c.expiry_announced.is_(False),
                    _visible,
                    api_keys.c.revoked_at.is_(None),
                )
                .values(expiry_announced=True)
                .returning(*api_keys.c)
            )
        ).all()
        for row in expired:
            await webhooks.emit(conn, "key.expired", row.tenant_id, {"key": _to_api(row, now)})
    return len(expired)


async def rotate_key(
    engine: AsyncEngine, pepper: str, key_id: str, grace_seconds: int, actor: Actor
) -> KeyWithSecret:
    """Issue a new secret for the same key; older secrets end now, or after the grace period."""
    now = database.utcnow()
    old_until = now + timedelta(seconds=grace_seconds)
    secret = key_format.generate()
    async with database.write(engine) as conn:
        row = await _fetch(conn, key_id)
        if row.revoked_at is not None:
            raise Conflict(f"key {key_id!r} is revoked and cannot be rotated", code="key_revoked")
        before = _to_api(row, now)
        await _end_secrets(conn, key_id, old_until)
        await _store_secret(conn, key_id, secret, pepper, now)
        await conn.execute(
            update(api_keys)
            .where(api_keys.c.id == key_id)
            .values(
                display_prefix=key_format.display_prefix(secret), rotated_at=now, updated_at=now
            )
        )
        after = _to_api(await _fetch(conn, key_id), now)
        details = {"grace_seconds": grace_seconds}
        await audit.record(
            conn, actor, "key.rotate", key_id, before=before, after=after, details=details
        )
        previous_until = database.utc_text(old_until)
        await webhooks.emit(
            conn,
            "key.rotated",
            after.tenant_id,
            {"key": after, "previous_secret_valid_until": previous_until},
        )
    return KeyWithSecret(
        **msgspec.structs.asdict(after),
        secret=secret,
        previous_secret_valid_until=old_until if grace_seconds else None,
        budgets=await budgets.list_budgets(engine, key_id=key_id, tenant_id=None),
    )


async def _end_secrets(conn: AsyncConnection, key_id: str, until: datetime) -> None:
    """End every live secret of a key at ``until`` (never extending one that ends sooner)."""
    await conn.execute(
        update(key_secrets)
        .where(
            key_secrets.c.key_id == key_id,
            or_(key_secrets.c.valid_until.is_(None), key_secrets.c.valid_until > until),
        )
        .values(valid_until=until)
    )


async def delete_key(engine: AsyncEngine, key_id: str, actor: Actor) -> None:
    """Hide the key from the admin API and refuse its secrets; its id stays for the ledger."""
    now = database.utcnow()
    async with database.write(engine) as conn:
        before = _to_api(await _fetch(conn, key_id), now)
        await _end_secrets(conn, key_id, now)
        await conn.execute(
            update(api_keys)
            .where(api_keys.c.id == key_id)
            .values(
                deleted_at=now,
                revoked_at=func.coalesce(api_keys.c.revoked_at, now),
                updated_at=now,
            )
        )
        await audit.record(conn, actor, "key.delete", key_id, before=before)
        if before.revoked_at is None:  # its secrets are refused from now on
            revoked = msgspec.structs.replace(before, status="revoked", revoked_at=now)
            await webhooks.emit(conn, "key.revoked", before.tenant_id, {"key": revoked})
