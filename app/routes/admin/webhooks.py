"""Admin API: webhook endpoints, their signing secrets and their deliveries."""

from __future__ import annotations

from litestar import delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from sqlalchemy.ext.asyncio import AsyncEngine

from app.ops import webhooks
from app.ops.audit import Actor
from app.pagination import DEFAULT_LIMIT
from app.routes.params import Cursor, Limit, PathId
from app.schemas import (
    WebhookCreate,
    WebhookDelivery,
    WebhookDeliveryPage,
    WebhookEndpoint,
    WebhookPage,
    WebhookUpdate,
    WebhookWithSecret,
)
from app.settings import Settings


@post(
    "/webhooks",
    summary="Register a webhook endpoint; the answer holds its signing secret, shown only once",
)
async def create_webhook(
    data: JSONBody[WebhookCreate],
    engine: NamedDependency[AsyncEngine],
    settings: NamedDependency[Settings],
    actor: NamedDependency[Actor],
) -> WebhookWithSecret:
    allow_private = settings.webhooks.allow_private
    return await webhooks.create_endpoint(engine, data, actor, allow_private=allow_private)


@get("/webhooks", summary="List webhook endpoints, newest first")
async def list_webhooks(
    engine: NamedDependency[AsyncEngine],
    limit: FromQuery[Limit] = DEFAULT_LIMIT,
    cursor: FromQuery[Cursor] = None,
) -> WebhookPage:
    return await webhooks.list_endpoints(engine, limit=limit, cursor=cursor)


@get("/webhooks/{webhook_id:str}", summary="Read a webhook endpoint (never its secret)")
async def get_webhook(
    webhook_id: FromPath[PathId], engine: NamedDependency[AsyncEngine]
) -> WebhookEndpoint:
    return await webhooks.get_endpoint(engine, webhook_id)


@patch(
    "/webhooks/{webhook_id:str}",
    summary="Change a webhook endpoint's URL, event types, tenant or enabled flag",
)
async def update_webhook(
    webhook_id: FromPath[PathId],
    data: JSONBody[WebhookUpdate],
    engine: NamedDependency[AsyncEngine],
    settings: NamedDependency[Settings],
    actor: NamedDependency[Actor],
) -> WebhookEndpoint:
    allow_private = settings.webhooks.allow_private
    return await webhooks.update_endpoint(
        engine, webhook_id, data, actor, allow_private=allow_private
    )


@delete("/webhooks/{webhook_id:str}", summary="Delete a webhook endpoint: nothing more is sent")
async def delete_webhook(
    webhook_id: FromPath[PathId],
    engine: NamedDependency[AsyncEngine],
    actor: NamedDependency[Actor],
) -> None:
    await webhooks.delete_endpoint(engine, webhook_id, actor)


@post(
    "/webhooks/{webhook_id:str}/rotate-secret",
    status_code=200,
    summary="Give a webhook endpoint a new signing secret, shown only in this answer",
)
async def rotate_webhook_secret(
    webhook_id: FromPath[PathId],
    engine: NamedDependency[AsyncEngine],
    actor: NamedDependency[Actor],
) -> WebhookWithSecret:
    return await webhooks.rotate_secret(engine, webhook_id, actor)


@get(
    "/webhooks/{webhook_id:str}/deliveries",
    summary="An endpoint's deliveries newest first: status, attempts, the last answer",
)
async def list_webhook_deliveries(
    webhook_id: FromPath[PathId],
    engine: NamedDependency[AsyncEngine],
    limit: FromQuery[Limit] = DEFAULT_LIMIT,
    cursor: FromQuery[Cursor] = None,
) -> WebhookDeliveryPage:
    return await webhooks.list_deliveries(engine, webhook_id, limit=limit, cursor=cursor)


@post(
    "/webhooks/{webhook_id:str}/deliveries/{delivery_id:str}/redeliver",
    status_code=200,
    summary="Send a delivery again now (same event and webhook-id)",
)
async def redeliver_webhook(
    webhook_id: FromPath[PathId],
    delivery_id: FromPath[PathId],
    engine: NamedDependency[AsyncEngine],
    actor: NamedDependency[Actor],
) -> WebhookDelivery:
    return await webhooks.redeliver(engine, webhook_id, delivery_id, actor)


ROUTES = [
    create_webhook,
    list_webhooks,
    get_webhook,
    update_webhook,
    delete_webhook,
    rotate_webhook_secret,
    list_webhook_deliveries,
    redeliver_webhook,
]
