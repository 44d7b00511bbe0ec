"""Console pages for virtual keys: list, create (the secret shown once), a key's budgets,
rate-limit use and calls, rotate, revoke."""

from __future__ import annotations

from litestar import Request, Response, get, post
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect

from app.access import keys, tenants
from app.billing import budgets, ledger, rate_limits
from app.console import forms
from app.console.gate import PREFIX, actor, next_page, render
from app.routes.params import PathId
from app.schemas import KeyCreate, KeyRotate, KeyStatus, KeyWithSecret
from app.storage import database

PAGE = 25
_STATUSES = ("active", "revoked", "expired")


@get("/keys")
async def key_list(
    request: Request,
    tenant_id: FromQuery[forms.FilterId] = None,
    status: FromQuery[str | None] = None,
    name: FromQuery[forms.SearchText] = None,
    cursor: FromQuery[forms.FilterId] = None,
) -> Response:
    engine = request.app.state.engine
    wanted: KeyStatus | None = status if status in _STATUSES else None  # type: ignore[assignment]
    page = await keys.list_keys(
        engine,
        tenant_id=tenant_id or None,
        status=wanted,
        name=name or None,
        limit=PAGE,
        cursor=cursor or None,
    )
    return render(
        request,
        "keys.html",
        keys=page.data,
        tenant_names=await tenants.names(engine, {key.tenant_id for key in page.data}),
        tenant_choices=await _tenant_choices(request, tenant_id),
        filters={"tenant_id": tenant_id or "", "status": wanted or "", "name": name or ""},
        statuses=_STATUSES,
        next_url=next_page(request, page.next_cursor),
    )


async def _tenant_choices(request: Request, chosen: str | None) -> dict[str, str]:
    """Tenants a picker offers: the newest 200, and the one already chosen."""
    engine = request.app.state.engine
    page = await tenants.list_tenants(engine, status="active", limit=200, cursor=None)
    choices = {tenant.id: tenant.name for tenant in page.data}
    if chosen and chosen not in choices:
        choices.update(await tenants.names(engine, {chosen}))
    return choices


@get("/keys/new")
async def new_key(request: Request, tenant_id: FromQuery[forms.FilterId] = None) -> Response:
    return render(
        request,
        "key_new.html",
        tenant_choices=await _tenant_choices(request, tenant_id),
        tenant_id=tenant_id or "",
        models=sorted(request.app.state.gateway.catalog.routes),
    )


@post("/keys")
async def create_key(request: Request) -> Response:
    fields = await request.form()
    chosen = [model for model in fields.getall("models", []) if isinstance(model, str)]
    limit = forms.budget(fields)
    data = forms.decoded(
        {
            "tenant_id": forms.text(fields, "tenant_id") or "",
            "name": forms.text(fields, "name") or "",
            "allowed_models": chosen or None,
            "expires_at": forms.utc_time(fields, "expires_at", "Expiry"),
            "rate_limits": forms.rate_limits(fields),
            "cache": fields.get("cache") == "on",
            "budgets": [limit] if limit else [],
        },
        KeyCreate,
    )
    state = request.app.state
    state.gateway.catalog.check_known(data.allowed_models)
    created = await keys.create_key(state.engine, state.settings.key_pepper, data, actor(request))
    return _secret_page(request, created, "created")


def _secret_page(request: Request, key: KeyWithSecret, done: str) -> Response:
    """The one page that shows a secret (never cached: see ``gate.console_headers``)."""
    status = 201 if done == "created" else 200
    return render(request, "key_secret.html", status=status, key=key, done=done)


@get("/keys/{key_id:str}")
async def key_page(
    request: Request, key_id: FromPath[PathId], cursor: FromQuery[forms.FilterId] = None
) -> Response:
    engine = request.app.state.engine
    key = await keys.get_key(engine, key_id)
    async with database.read(engine) as conn:
        on_path = await budgets.views_on_path(conn, key.id, key.tenant_id)
        use = (
            await rate_limits.current_use(conn, key.id, key.rate_limits, database.utcnow())
            if key.rate_limits
            else None
        )
    calls = await ledger.list_calls(engine, PAGE, cursor or None, key_id=key.id)
    tenant = await tenants.get_tenant(engine, key.tenant_id)
    return render(
        request,
        "key.html",
        key=key,
        tenant=tenant,
        budgets=on_path,
        use=use,
        calls=calls.data,
        next_url=next_page(request, calls.next_cursor),
    )


@post("/keys/{key_id:str}/rotate")
async def rotate_key(request: Request, key_id: FromPath[PathId]) -> Response:
    fields = await request.form()
    grace = forms.whole(fields, "grace_seconds", "Grace") or 0
    data = forms.decoded({"grace_seconds": grace}, KeyRotate)
    state = request.app.state
    rotated = await keys.rotate_key(
        state.engine, state.settings.key_pepper, key_id, data.grace_seconds, actor(request)
    )
    return _secret_page(request, rotated, "rotated")


@get("/keys/{key_id:str}/revoke")
async def confirm_revoke(request: Request, key_id: FromPath[PathId]) -> Response:
    key = await keys.get_key(request.app.state.engine, key_id)
    return render(request, "key_revoke.html", key=key)


@post("/keys/{key_id:str}/revoke", status_code=303)
async def revoke_key(request: Request, key_id: FromPath[PathId]) -> Redirect:
    await keys.revoke_key(request.app.state.engine, key_id, actor(request))
    return Redirect(f"{PREFIX}/keys/{key_id}?done=revoked", status_code=303)


ROUTES = [key_list, new_key, create_key, key_page, rotate_key, confirm_revoke, revoke_key]
