"""Console pages for tenants: search and page, create, rename, deactivate and reactivate,
and a tenant's keys, budgets and spend this month."""

from __future__ import annotations

from litestar import Request, Response, get, post
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect

from app.access import keys, tenants
from app.billing import budgets, usage
from app.console import forms
from app.console.gate import PREFIX, actor, next_page, render
from app.routes.params import PathId
from app.schemas import TenantCreate, TenantUpdate
from app.storage import database

PAGE = 25
_STATUSES = ("active", "inactive")


@get("/tenants")
async def tenant_list(
    request: Request,
    name: FromQuery[forms.SearchText] = None,
    status: FromQuery[str | None] = None,
    cursor: FromQuery[forms.FilterId] = None,
) -> Response:
    wanted = status if status in _STATUSES else None
    page = await tenants.list_tenants(
        request.app.state.engine,
        status=wanted,
        name=name or None,
        limit=PAGE,
        cursor=cursor or None,
    )
    return render(
        request,
        "tenants.html",
        tenants=page.data,
        filters={"name": name or "", "status": wanted or ""},
        statuses=_STATUSES,
        next_url=next_page(request, page.next_cursor),
    )


@post("/tenants", status_code=303)
async def create_tenant(request: Request) -> Redirect:
    fields = await request.form()
    data = forms.decoded({"name": forms.text(fields, "name") or ""}, TenantCreate)
    tenant = await tenants.create_tenant(request.app.state.engine, data, actor(request))
    return Redirect(f"{PREFIX}/tenants/{tenant.id}?done=created", status_code=303)


@get("/tenants/{tenant_id:str}")
async def tenant_page(request: Request, tenant_id: FromPath[PathId]) -> Response:
    engine = request.app.state.engine
    tenant = await tenants.get_tenant(engine, tenant_id)
    tenant_keys = await keys.list_keys(
        engine, tenant_id=tenant.id, status=None, limit=PAGE, cursor=None
    )
    month_start, _ = budgets.period_bounds("month", database.utcnow())
    spend = await usage.usage_report(engine, ["model"], month_start, None, tenant_id=tenant.id)
    return render(
        request,
        "tenant.html",
        tenant=tenant,
        keys=tenant_keys.data,
        more_keys=tenant_keys.next_cursor is not None,
        budgets=await budgets.list_budgets(engine, key_id=None, tenant_id=tenant.id),
        spend=spend,
    )


@post("/tenants/{tenant_id:str}", status_code=303)
async def update_tenant(request: Request, tenant_id: FromPath[PathId]) -> Redirect:
    """Rename (``name``), or set the status (``status``: active or inactive)."""
    fields = await request.form()
    changes = {field: value for field in ("name", "status") if (value := forms.text(fields, field))}
    data = forms.decoded(changes, TenantUpdate)
    await tenants.update_tenant(request.app.state.engine, tenant_id, data, actor(request))
    return Redirect(f"{PREFIX}/tenants/{tenant_id}?done=saved", status_code=303)


ROUTES = [tenant_list, create_tenant, tenant_page, update_tenant]
