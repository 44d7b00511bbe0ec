"""Tenant API under /v1 that is not a transcription: what the calling key may do."""

from __future__ import annotations

from litestar import get
from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncEngine

from app.access.auth import Principal
from app.billing import budgets, rate_limits, usage
from app.schemas import Quota
from app.storage import database


@get("/quota", summary="This key's identity, models, budgets on its path, and rate limits")
async def quota(
    principal: NamedDependency[Principal], engine: NamedDependency[AsyncEngine]
) -> Quota:
    limits, now = principal.rate_limits, database.utcnow()
    async with database.read(engine) as conn:
        on_path = await budgets.views_on_path(conn, principal.key_id, principal.tenant_id)
        use = await rate_limits.current_use(conn, principal.key_id, limits, now) if limits else None
        month_start, _ = budgets.period_bounds("month", now)
        month = await usage.key_totals(conn, principal.key_id, month_start)
    return Quota(
        key_id=principal.key_id,
        key_name=principal.key_name,
        display_prefix=principal.display_prefix,
        tenant_id=principal.tenant_id,
        tenant_name=principal.tenant_name,
        status="active",
        expires_at=principal.expires_at,
        allowed_models=principal.allowed_models,
        budgets=on_path,
        rate_limits=limits,
        rate_use=use,
        usage_this_month=month,
    )


ROUTES = [quota]
