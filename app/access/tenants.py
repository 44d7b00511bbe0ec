"""Tenants: the customers that own keys (and, later, budgets)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import exc, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.errors import Conflict, NotFound
from app.ids import new_id
from app.ops import audit, webhooks
from app.ops.audit import Actor
from app.pagination import paginate, split_page
from app.schemas import Tenant, TenantCreate, TenantPage, TenantUpdate, provided
from app.storage import database
from app.storage.models import tenants


def _to_api(row: Any) -> Tenant:
    return Tenant(
        id=row.id,
        name=row.name,
        status=row.status,
        metadata=row.metadata,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _name_taken(name: str) -> Conflict:
    return Conflict(f"a tenant named {name!r} already exists", param="name", code="name_taken")


def name_key(name: str) -> str:
    """What makes two tenant names the same (names are already NFC, see schemas)."""
    return name.casefold()


async def create_tenant(engine: AsyncEngine, data: TenantCreate, actor: Actor) -> Tenant:
    now = database.utcnow()
    values = {
        "id": new_id("ten"),
        "name": data.name,
        "status": "active",
        "metadata": data.metadata,
        "created_at": now,
        "updated_at": now,
    }
    try:
        async with database.write(engine) as conn:
            await conn.execute(insert(tenants).values(**values, name_key=name_key(data.name)))
            await audit.record(conn, actor, "tenant.create", values["id"], after=Tenant(**values))
    except exc.IntegrityError:
        raise _name_taken(data.name) from None
    return Tenant(**values)


async def list_tenants(
    engine: AsyncEngine,
    *,
    status: str | None,
    limit: int,
    cursor: str | None,
    name: str | None = None,
) -> TenantPage:
    """Tenants newest first; ``name`` matches any part of a name, in any case."""
    query = select(tenants)
    if status:
        query = query.where(tenants.c.status == status)
    if name:
        query = query.where(tenants.c.name_key.contains(name_key(name), autoescape=True))
    async with database.read(engine) as conn:
        rows = (await conn.execute(paginate(query, tenants.c.id, limit, cursor))).all()
    page, next_cursor = split_page(rows, limit, lambda row: row.id)
    return TenantPage(data=[_to_api(row) for row in page], next_cursor=next_cursor)


async def names(engine: AsyncEngine, tenant_ids: set[str]) -> dict[str, str]:
    """Each tenant's name by id, for these ids (labels beside ids on a page)."""
    async with database.read(engine) as conn:
        return await database.names(conn, tenants, tenant_ids)


async def fetch_tenant(conn: AsyncConnection, tenant_id: str, *, param: str | None = None) -> Any:
    row = (await conn.execute(select(tenants).where(tenants.c.id == tenant_id))).first()
    if row is None:
        raise NotFound(f"no tenant with id {tenant_id!r}", param=param, code="tenant_not_found")
    return row


async def get_tenant(engine: AsyncEngine, tenant_id: str) -> Tenant:
    async with database.read(engine) as conn:
        return _to_api(await fetch_tenant(conn, tenant_id))


async def update_tenant(
    engine: AsyncEngine, tenant_id: str, data: TenantUpdate, actor: Actor
) -> Tenant:
    changes = provided(data)
    if "name" in changes:
        changes["name_key"] = name_key(changes["name"])  # type: ignore[arg-type]
    return await _apply(engine, tenant_id, changes, actor, "update", name=changes.get("name"))


async def deactivate_tenant(engine: AsyncEngine, tenant_id: str, actor: Actor) -> Tenant:
    """Keys of an inactive tenant are refused (403) until it is set active again."""
    return await _apply(engine, tenant_id, {"status": "inactive"}, actor, "deactivate")


async def _apply(
    engine: AsyncEngine,
    tenant_id: str,
    changes: dict[str, Any],
    actor: Actor,
    verb: str,
    name: str | None = None,
) -> Tenant:
    try:
        async with database.write(engine) as conn:
            before = _to_api(await fetch_tenant(conn, tenant_id))
            if changes:
                values = {**changes, "updated_at": database.utcnow()}
                await conn.execute(
                    update(tenants).where(tenants.c.id == tenant_id).values(**values)
                )
            after = _to_api(await fetch_tenant(conn, tenant_id))
            await audit.record(conn, actor, f"tenant.{verb}", tenant_id, before=before, after=after)
            if before.status == "active" and after.status == "inactive":
                await webhooks.emit(conn, "tenant.deactivated", tenant_id, {"tenant": after})
    except exc.IntegrityError:
        raise _name_taken(name or "") from None
    return after
