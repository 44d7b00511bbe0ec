"""Read-only console pages: the models and prices of ``earmark.toml``, webhook endpoints
with their latest deliveries, and the audit trail."""

from __future__ import annotations

from litestar import Request, Response, get
from litestar.params import FromPath, FromQuery

from app.console import forms
from app.console.gate import next_page, render
from app.ops import audit, webhooks
from app.routes.params import PathId

PAGE = 50


@get("/models")
async def models(request: Request) -> Response:
    catalog = request.app.state.gateway.catalog
    return render(
        request, "models.html", routes=sorted(catalog.routes.values(), key=lambda r: r.name)
    )


@get("/webhooks")
async def webhook_list(request: Request, cursor: FromQuery[forms.FilterId] = None) -> Response:
    page = await webhooks.list_endpoints(
        request.app.state.engine, limit=PAGE, cursor=cursor or None
    )
    return render(
        request, "webhooks.html", endpoints=page.data, next_url=next_page(request, page.next_cursor)
    )


@get("/webhooks/{webhook_id:str}")
async def webhook_page(
    request: Request, webhook_id: FromPath[PathId], cursor: FromQuery[forms.FilterId] = None
) -> Response:
    engine = request.app.state.engine
    endpoint = await webhooks.get_endpoint(engine, webhook_id)
    deliveries = await webhooks.list_deliveries(
        engine, webhook_id, limit=PAGE, cursor=cursor or None
    )
    return render(
        request,
        "webhook.html",
        endpoint=endpoint,
        deliveries=deliveries.data,
        next_url=next_page(request, deliveries.next_cursor),
    )


@get("/audit")
async def audit_page(
    request: Request,
    target: FromQuery[forms.FilterId] = None,
    by: forms.FilterActor = None,
    action: FromQuery[forms.FilterAction] = None,
    cursor: FromQuery[forms.FilterId] = None,
) -> Response:
    filters = {"target": target or None, "actor": by or None, "action": action or None}
    page = await audit.list_entries(
        request.app.state.engine, **filters, limit=PAGE, cursor=cursor or None
    )
    return render(
        request,
        "audit.html",
        entries=page.data,
        filters={name: value or "" for name, value in filters.items()},
        next_url=next_page(request, page.next_cursor),
    )


ROUTES = [models, webhook_list, webhook_page, audit_page]
