"""Admin API: virtual keys."""

from __future__ import annotations

from litestar import Request, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from sqlalchemy.ext.asyncio import AsyncEngine

from app.access import keys
from app.billing import ledger
from app.ops.audit import Actor
from app.pagination import DEFAULT_LIMIT
from app.routes.params import AllowUnknownModels, Cursor, Limit, PathId, QueryId
from app.schemas import Key, KeyCreate, KeyPage, KeyRotate, KeyStatus, KeyUpdate, KeyWithSecret
from app.settings import Settings


@post("/keys", summary="Create a key; the response holds its secret, shown only this once")
async def create_key(
    request: Request,
    data: JSONBody[KeyCreate],
    engine: NamedDependency[AsyncEngine],
    settings: NamedDependency[Settings],
    actor: NamedDependency[Actor],
    allow_unknown_models: FromQuery[AllowUnknownModels] = False,
) -> KeyWithSecret:
    if not allow_unknown_models:
        request.app.state.gateway.catalog.check_known(data.allowed_models)
    return await keys.create_key(engine, settings.key_pepper, data, actor)


@get("/keys", summary="List keys, newest first")
async def list_keys(
    engine: NamedDependency[AsyncEngine],
    tenant_id: FromQuery[QueryId] = None,
    status: FromQuery[KeyStatus | None] = None,
    limit: FromQuery[Limit] = DEFAULT_LIMIT,
    cursor: FromQuery[Cursor] = None,
) -> KeyPage:
    return await keys.list_keys(
        engine, tenant_id=tenant_id, status=status, limit=limit, cursor=cursor
    )


@get("/keys/{key_id:str}", summary="Read a key (never its secret)")
async def get_key(key_id: FromPath[PathId], engine: NamedDependency[AsyncEngine]) -> Key:
    return await keys.get_key(engine, key_id)


@patch("/keys/{key_id:str}", summary="Update a key's name, metadata, expiry or allowed models")
async def update_key(
    request: Request,
    key_id: FromPath[PathId],
    data: JSONBody[KeyUpdate],
    engine: NamedDependency[AsyncEngine],
    actor: NamedDependency[Actor],
    allow_unknown_models: FromQuery[AllowUnknownModels] = False,
) -> Key:
    if isinstance(data.allowed_models, list) and not allow_unknown_models:
        request.app.state.gateway.catalog.check_known(data.allowed_models)
    return await keys.update_key(engine, key_id, data, actor)


@post("/keys/{key_id:str}/revoke", status_code=200, summary="Revoke a key, effective at once")
async def revoke_key(
    key_id: FromPath[PathId], engine: NamedDependency[AsyncEngine], actor: NamedDependency[Actor]
) -> Key:
    return await keys.revoke_key(engine, key_id, actor)


@post(
    "/keys/{key_id:str}/rotate",
    status_code=200,
    summary="Issue a new secret for the key; the old one lasts `grace_seconds` more",
)
async def rotate_key(
    key_id: FromPath[PathId],
    engine: NamedDependency[AsyncEngine],
    settings: NamedDependency[Settings],
    actor: NamedDependency[Actor],
    data: JSONBody[KeyRotate | None] = None,
) -> KeyWithSecret:
    grace = data.grace_seconds if data else 0
    return await keys.rotate_key(engine, settings.key_pepper, key_id, grace, actor)


@delete("/keys/{key_id:str}", summary="Delete a key: refused from now on, kept in the ledger")
async def delete_key(
    key_id: FromPath[PathId], engine: NamedDependency[AsyncEngine], actor: NamedDependency[Actor]
) -> None:
    await keys.delete_key(engine, key_id, actor)


@get(
    "/keys/{key_id:str}/calls",
    summary="The key's ledger rows, newest first (a deleted key's too)",
)
async def list_key_calls(
    key_id: FromPath[PathId],
    engine: NamedDependency[AsyncEngine],
    limit: FromQuery[Limit] = DEFAULT_LIMIT,
    cursor: FromQuery[Cursor] = None,
) -> ledger.CallPage:
    await keys.check_existed(engine, key_id)  # 404 for an unknown key, not an empty page
    return await ledger.list_calls(engine, limit, cursor, key_id=key_id)


ROUTES = [
    create_key,
    list_keys,
    get_key,
    update_key,
    revoke_key,
    rotate_key,
    delete_key,
    list_key_calls,
]
