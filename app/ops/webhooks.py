"""Webhook endpoints and the events they are sent: registration and the outbox.

An operator registers an endpoint (a URL, the event types it wants, optionally one
tenant); its signing secret (``whsec_`` + base64, Standard Webhooks' form) is shown at
creation and rotation only. A change that causes an event calls ``emit`` inside its own
transaction: the event row and one delivery per endpoint that wants it are written with
the change, so an event is never lost and never sent for a change that rolled back.
``webhook_delivery`` posts them. Every change here is in the audit trail; the secret never.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

import msgspec
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.errors import NotFound
from app.ids import new_id
from app.ops import audit
from app.ops.audit import Actor
from app.ops.webhook_targets import check_url
from app.pagination import paginate, split_page
from app.schemas import (
    WebhookCreate,
    WebhookDelivery,
    WebhookDeliveryPage,
    WebhookEndpoint,
    WebhookPage,
    WebhookUpdate,
    WebhookWithSecret,
    provided,
)
from app.storage import database
from app.storage.driver import Program, Statement, execute, execute_many, fetch, json, run_on
from app.storage.models import webhook_deliveries, webhook_endpoints, webhook_events

# Consecutive failed attempts after which an endpoint is shown as failing.
FAILING_AFTER = 5


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _to_api(row: Any) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=row.id,
        url=row.url,
        event_types=list(row.event_types),
        tenant_id=row.tenant_id,
        enabled=row.enabled,
        failing=row.consecutive_failures >= FAILING_AFTER,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def _fetch(conn: AsyncConnection, webhook_id: str) -> Any:
    row = (
        await conn.execute(
            select(webhook_endpoints).where(
                webhook_endpoints.c.id == webhook_id, webhook_endpoints.c.deleted_at.is_(None)
            )
        )
    ).first()
    if row is None:
        raise NotFound(f"no webhook endpoint with id {webhook_id!r}", code="webhook_not_found")
    return row


async def _check_tenant(conn: AsyncConnection, tenant_id: str) -> None:
    from app.access.tenants import fetch_tenant  # it imports this module

    await fetch_tenant(conn, tenant_id, param="tenant_id")


async def create_endpoint(
    engine: AsyncEngine, data: WebhookCreate, actor: Actor, *, allow_private: bool
) -> WebhookWithSecret:
    await check_url(data.url, allow_private=allow_private)
    now = database.utcnow()
    values = {
        "id": new_id("whk"),
        "url": data.url,
        "event_types": sorted(set(data.event_types)),
        "tenant_id": data.tenant_id,
        "enabled": data.enabled,
        "secret": new_secret(),
        "consecutive_failures": 0,
        "created_at": now,
        "updated_at": now,
    }
    async with database.write(engine) as conn:
        if data.tenant_id is not None:
            await _check_tenant(conn, data.tenant_id)
        await conn.execute(webhook_endpoints.insert().values(**values))
        row = await _fetch(conn, values["id"])
        await audit.record(conn, actor, "webhook.create", row.id, after=_to_api(row))
    return WebhookWithSecret(**msgspec.structs.asdict(_to_api(row)), secret=row.secret)


async def list_endpoints(engine: AsyncEngine, *, limit: int, cursor: str | None) -> WebhookPage:
    query = select(webhook_endpoints).where(webhook_endpoints.c.deleted_at.is_(None))
    async with database.read(engine) as conn:
        rows = (await conn.execute(paginate(query, webhook_endpoints.c.id, limit, cursor))).all()
    page, next_cursor = split_page(rows, limit, lambda row: row.id)
    return WebhookPage(data=[_to_api(row) for row in page], next_cursor=next_cursor)


async def get_endpoint(engine: AsyncEngine, webhook_id: str) -> WebhookEndpoint:
    async with database.read(engine) as conn:
        return _to_api(await _fetch(conn, webhook_id))


async def update_endpoint(
    engine: AsyncEngine,
    webhook_id: str,
    data: WebhookUpdate,
    actor: Actor,
    *,
    allow_private: bool,
) -> WebhookEndpoint:
    changes: dict[str, Any] = provided(data)
    if "url" in changes:
        await check_url(changes["url"], allow_private=allow_private)
    if "event_types" in changes:
        changes["event_types"] = sorted(set(changes["event_types"]))
    return await _change(engine, webhook_id, changes, actor, "update")


async def rotate_secret(engine: AsyncEngine, webhook_id: str, actor: Actor) -> WebhookWithSecret:
    """A new secret, used from the next attempt on (receivers switch when they see it)."""
    secret = new_secret()
    endpoint = await _change(engine, webhook_id, {"secret": secret}, actor, "rotate_secret")
    return WebhookWithSecret(**msgspec.structs.asdict(endpoint), secret=secret)


async def delete_endpoint(engine: AsyncEngine, webhook_id: str, actor: Actor) -> None:
    """Nothing more is sent to it; what was still to be sent is marked failed."""
    now = database.utcnow()
    async with database.write(engine) as conn:
        before = _to_api(await _fetch(conn, webhook_id))
        # Deliveries, then the endpoint: the order the delivery worker locks them in.
        await conn.execute(
            update(webhook_deliveries)
            .where(
                webhook_deliveries.c.endpoint_id == webhook_id,
                webhook_deliveries.c.status == "pending",
            )
            .values(status="failed", next_attempt_at=None, last_error="endpoint deleted")
        )
        await conn.execute(
            update(webhook_endpoints)
            .where(webhook_endpoints.c.id == webhook_id)
            .values(deleted_at=now, updated_at=now)
        )
        await audit.record(conn, actor, "webhook.delete", webhook_id, before=before)


async def _change(
    engine: AsyncEngine, webhook_id: str, changes: dict[str, Any], actor: Actor, verb: str
) -> WebhookEndpoint:
    async with database.write(engine) as conn:
        before = _to_api(await _fetch(conn, webhook_id))
        if changes.get("tenant_id") is not None:
            await _check_tenant(conn, changes["tenant_id"])
        await conn.execute(
            update(webhook_endpoints)
            .where(webhook_endpoints.c.id == webhook_id)
            .values(**changes, updated_at=database.utcnow())
        )
        after = _to_api(await _fetch(conn, webhook_id))
        await audit.record(conn, actor, f"webhook.{verb}", webhook_id, before=before, after=after)
    return after


# --- Events ------------------------------------------------------------------------------


_WANTING = Statement(
    select(
        webhook_endpoints.c.id, webhook_endpoints.c.event_types, webhook_endpoints.c.tenant_id
    ).where(webhook_endpoints.c.enabled, webhook_endpoints.c.deleted_at.is_(None))
)
_EVENT_COLUMNS = ["id", "type", "tenant_id", "payload", "created_at"]
_INSERT_EVENT = Statement(webhook_events.insert(), columns=_EVENT_COLUMNS)
_DELIVERY_COLUMNS = ["id", "event_id", "endpoint_id", "status", "attempts"]
_INSERT_DELIVERY = Statement(
    webhook_deliveries.insert(), columns=[*_DELIVERY_COLUMNS, "next_attempt_at", "created_at"]
)


def emitting(event_type: str, tenant_id: str | None, data: Any) -> Program[None]:
    """Queue ``event_type`` for every enabled endpoint that wants it, in the caller's
    transaction (a program: the call path's settle runs it on the bare drivers). ``data``
    is as the admin API shows it (amounts as decimal strings)."""
    wanting = [
        endpoint_id
        for endpoint_id, event_types, only_tenant in (yield fetch(_WANTING))
        if event_type in json(event_types) and only_tenant in (None, tenant_id)
    ]
    if not wanting:
        return
    now = database.utcnow()
    event_id = new_id("msg")
    payload = {
        "type": event_type,
        "timestamp": database.utc_text(now),
        "data": msgspec.to_builtins(data),
    }
    yield execute(
        _INSERT_EVENT,
        id=event_id,
        type=event_type,
        tenant_id=tenant_id,
        payload=payload,
        created_at=now,
    )
    yield execute_many(
        _INSERT_DELIVERY,
        [
            {
                "id": new_id("dlv"),
                "event_id": event_id,
                "endpoint_id": endpoint_id,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for endpoint_id in wanting
        ],
    )


async def emit(conn: AsyncConnection, event_type: str, tenant_id: str | None, data: Any) -> None:
    """``emitting`` in an admin change's SQLAlchemy transaction."""
    await run_on(conn, emitting(event_type, tenant_id, data))


# --- Deliveries --------------------------------------------------------------------------

_DELIVERY = select(webhook_deliveries, webhook_events.c.type.label("event_type")).join(
    webhook_events, webhook_events.c.id == webhook_deliveries.c.event_id
)


def _delivery(row: Any) -> WebhookDelivery:
    return WebhookDelivery(
        id=row.id,
        event_id=row.event_id,
        event_type=row.event_type,
        status=row.status,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        last_attempt_at=row.last_attempt_at,
        last_status=row.last_status,
        last_error=row.last_error,
        created_at=row.created_at,
    )


async def list_deliveries(
    engine: AsyncEngine, webhook_id: str, *, limit: int, cursor: str | None
) -> WebhookDeliveryPage:
    query = _DELIVERY.where(webhook_deliveries.c.endpoint_id == webhook_id)
    async with database.read(engine) as conn:
        await _fetch(conn, webhook_id)
        rows = (await conn.execute(paginate(query, webhook_deliveries.c.id, limit, cursor))).all()
    page, next_cursor = split_page(rows, limit, lambda row: row.id)
    return WebhookDeliveryPage(data=[_delivery(row) for row in page], next_cursor=next_cursor)


async def redeliver(
    engine: AsyncEngine, webhook_id: str, delivery_id: str, actor: Actor
) -> WebhookDelivery:
    """Send a delivery again now (same event, same ``webhook-id``), whatever its state."""
    query = _DELIVERY.where(
        webhook_deliveries.c.id == delivery_id, webhook_deliveries.c.endpoint_id == webhook_id
    )
    async with database.write(engine) as conn:
        await _fetch(conn, webhook_id)
        if (await conn.execute(query)).first() is None:
            raise NotFound(
                f"no delivery {delivery_id!r} of {webhook_id}", code="delivery_not_found"
            )
        await conn.execute(
            update(webhook_deliveries)
            .where(webhook_deliveries.c.id == delivery_id)
            .values(status="pending", next_attempt_at=database.utcnow())
        )
        await audit.record(
            conn, actor, "webhook.redeliver", webhook_id, details={"delivery_id": delivery_id}
        )
        return _delivery((await conn.execute(query)).one())
