"""Admin API: the audit trail of admin changes, read-only, as JSON pages or CSV."""

from __future__ import annotations

from typing import Annotated, Literal

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.params import FromQuery, Parameter, QueryParameter
from sqlalchemy.ext.asyncio import AsyncEngine

from app.billing import usage
from app.ops import audit
from app.pagination import DEFAULT_LIMIT
from app.routes.params import ACTION_PATTERN, ACTOR_PATTERN, Cursor, From, Limit, QueryId, To
from app.schemas import AuditPage

ActorName = Annotated[
    str | None,
    QueryParameter(
        name="actor",  # not the handler's argument name: "actor" is the admin's dependency
        pattern=ACTOR_PATTERN,
        max_length=120,
        description="token, user:NAME or cli:OS_USER",
    ),
]
Action = Annotated[
    str | None,
    Parameter(pattern=ACTION_PATTERN, description="e.g. key.revoke"),
]
# A CSV export is every matching row; past this many, narrow the range.
CSV_MAX_ROWS = 100_000


@get(
    "/audit",
    summary="Admin changes newest first: who changed what, before and after, from where",
    description="Filters are exact matches (`target` an id, `actor` as recorded, `action` "
    "as `TYPE.VERB`), `from` inclusive and `to` exclusive. `format=csv` answers every "
    f"matching row (at most {CSV_MAX_ROWS:,}) as `text/csv`, JSON columns as JSON text.",
)
async def list_audit(
    engine: NamedDependency[AsyncEngine],
    target: FromQuery[QueryId] = None,
    by: ActorName = None,
    action: FromQuery[Action] = None,
    start: From = None,
    end: To = None,
    limit: FromQuery[Limit] = DEFAULT_LIMIT,
    cursor: FromQuery[Cursor] = None,
    format: FromQuery[Literal["json", "csv"]] = "json",
) -> Response[AuditPage]:
    filters = {
        "target": target,
        "actor": by,
        "action": action,
        "start": usage.parse_instant("from", start),
        "end": usage.parse_instant("to", end),
    }
    if format == "json":
        return Response(await audit.list_entries(engine, **filters, limit=limit, cursor=cursor))
    entries = await audit.every_entry(engine, **filters, cursor=cursor, at_most=CSV_MAX_ROWS)
    return Response(
        audit.to_csv(entries),
        media_type="text/csv",
        headers={"content-disposition": 'attachment; filename="earmark-audit.csv"'},
    )


ROUTES = [list_audit]
