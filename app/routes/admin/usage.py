"""Admin API: usage reports, as JSON or CSV."""

from __future__ import annotations

from typing import Literal

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.params import FromQuery
from sqlalchemy.ext.asyncio import AsyncEngine

from app.billing import usage
from app.routes.params import From, To


@get(
    "/usage",
    summary="Calls, audio seconds, tokens and cost grouped over a time range",
    description="JSON by default; `format=csv` answers the same rows as `text/csv` (an "
    "attachment, one header line, the group columns with tenant and key names, then "
    "the metrics).",
)
async def usage_report(
    engine: NamedDependency[AsyncEngine],
    group_by: FromQuery[str | None] = None,
    start: From = None,
    end: To = None,
    format: FromQuery[Literal["json", "csv"]] = "json",
) -> Response[usage.UsageReport]:
    groups = usage.parse_group_by(group_by)
    bounds = usage.parse_instant("from", start), usage.parse_instant("to", end)
    report = await usage.usage_report(engine, groups, *bounds)
    if format == "csv":
        return Response(
            usage.to_csv(report),
            media_type="text/csv",  # Litestar adds "; charset=utf-8" to text/*
            headers={"content-disposition": 'attachment; filename="earmark-usage.csv"'},
        )
    return Response(report)


ROUTES = [usage_report]
