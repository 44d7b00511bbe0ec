"""Admin API: usage reports, as JSON or CSV."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter
from sqlalchemy.ext.asyncio import AsyncEngine

from app import usage
from app.errors import InvalidRequest

From = Annotated[str | None, QueryParameter(name="from", description="inclusive, RFC 3339")]
To = Annotated[str | None, QueryParameter(name="to", description="exclusive, RFC 3339")]


def _instant(name: str, text: str | None) -> datetime | None:
    """A bound of the range; parsed here so that errors name `from` and `to`."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise InvalidRequest(
            f"`{name}` must be an RFC 3339 time with a UTC offset, e.g. 2026-11-01T00:00:00Z.",
            param=name,
        )
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+05:00 is before the year 1 in UTC
        raise InvalidRequest(f"`{name}` is out of range.", param=name) from None


@get("/usage", summary="Calls, audio seconds, tokens and cost grouped over a time range")
async def usage_report(
    engine: NamedDependency[AsyncEngine],
    group_by: FromQuery[str | None] = None,
    start: From = None,
    end: To = None,
    format: FromQuery[Literal["json", "csv"]] = "json",
) -> Response[object]:
    groups = usage.parse_group_by(group_by)
    report = await usage.usage_report(engine, groups, _instant("from", start), _instant("to", end))
    if format == "csv":
        return Response(
            usage.to_csv(report),
            media_type="text/csv",  # Litestar adds "; charset=utf-8" to text/*
            headers={"content-disposition": 'attachment; filename="earmark-usage.csv"'},
        )
    return Response(report)


ROUTES = [usage_report]
