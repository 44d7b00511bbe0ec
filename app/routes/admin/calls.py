"""Admin API: the ledger's calls across keys, and the ones to review."""

from __future__ import annotations

from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromQuery
from sqlalchemy.ext.asyncio import AsyncEngine

from app.billing import ledger
from app.pagination import DEFAULT_LIMIT
from app.routes.params import Cursor, Limit, QueryId


@get(
    "/calls",
    summary="Calls newest first, with their upstream attempts; review=true for the calls "
    "charged for an uncertain attempt, an overrun of their hold, or a lost worker",
)
async def list_calls(
    engine: NamedDependency[AsyncEngine],
    review: FromQuery[bool] = False,
    key_id: FromQuery[QueryId] = None,
    tenant_id: FromQuery[QueryId] = None,
    limit: FromQuery[Limit] = DEFAULT_LIMIT,
    cursor: FromQuery[Cursor] = None,
) -> ledger.CallPage:
    return await ledger.list_calls(
        engine, limit, cursor, key_id=key_id, tenant_id=tenant_id, review=review
    )


ROUTES = [list_calls]
