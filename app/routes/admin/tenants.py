"""Admin API: tenants."""

from __future__ import annotations

from litestar import delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from sqlalchemy.ext.asyncio import AsyncEngine

from app.access import tenants
from app.ops.audit import Actor
from app.pagination import DEFAULT_LIMIT
from app.routes.params import Cursor, Limit, PathId
from app.schemas import Tenant, TenantCreate, TenantPage, TenantStatus, TenantUpdate


@post("/tenants", summary="Create a tenant")
async def create_tenant(
    data: JSONBody[TenantCreate],
    engine: NamedDependency[AsyncEngine],
    actor: NamedDependency[Actor],
) -> Tenant:
    return await tenants.create_tenant(engine, data, actor)


@get("/tenants", summary="List tenants, newest first")
async def list_tenants(
    engine: NamedDependency[AsyncEngine],
    status: FromQuery[TenantStatus | None] = None,
    limit: FromQuery[Limit] = DEFAULT_LIMIT,
    cursor: FromQuery[Cursor] = None,
) -> TenantPage:
    return await tenants.list_tenants(engine, status=status, limit=limit, cursor=cursor)


@get("/tenants/{tenant_id:str}", summary="Read a tenant")
async def get_tenant(tenant_id: FromPath[PathId], engine: NamedDependency[AsyncEngine]) -> Tenant:
    return await tenants.get_tenant(engine, tenant_id)


@patch("/tenants/{tenant_id:str}", summary="Update a tenant's name, metadata or status")
async def update_tenant(
    tenant_id: FromPath[PathId],
    data: JSONBody[TenantUpdate],
    engine: NamedDependency[AsyncEngine],
    actor: NamedDependency[Actor],
) -> Tenant:
    return await tenants.update_tenant(engine, tenant_id, data, actor)


@delete(
    "/tenants/{tenant_id:str}",
    status_code=200,
    summary="Deactivate a tenant: its keys are refused until it is set active again",
)
async def deactivate_tenant(
    tenant_id: FromPath[PathId], engine: NamedDependency[AsyncEngine], actor: NamedDependency[Actor]
) -> Tenant:
    return await tenants.deactivate_tenant(engine, tenant_id, actor)


ROUTES = [create_tenant, list_tenants, get_tenant, update_tenant, deactivate_tenant]
