"""The console's usage report: ``/admin/usage`` by day and by tenant or model, as a table,
as charts of spend and audio hours per day, and as the same CSV."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from litestar import Request, Response, get
from litestar.params import FromQuery, QueryParameter

from app.billing import usage
from app.billing.usage import UsageReport
from app.console.gate import render
from app.errors import InvalidRequest

DEFAULT_DAYS = 30
MAX_DAYS = 3 * 366  # a chart point a day: longer ranges are for the CSV of /admin/usage
From = Annotated[str | None, QueryParameter(name="from")]
To = Annotated[str | None, QueryParameter(name="to")]
_BY = ("tenant", "model")


def _day(name: str, text: str | None, default: date) -> date:
    if not text:
        return default
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"`{name}` must be a date, e.g. 2026-12-01.", param=name) from None


async def _report(
    request: Request, start: str | None, end: str | None, by: str | None
) -> tuple[UsageReport, dict[str, Any]]:
    today = datetime.now(UTC).date()
    first = _day("from", start, today - timedelta(days=DEFAULT_DAYS - 1))
    last = _day("to", end, today)
    if last < first:
        raise InvalidRequest("`to` must not be before `from`.", param="to")
    if (last - first).days >= MAX_DAYS or last == date.max:
        raise InvalidRequest(
            f"Show at most {MAX_DAYS} days at once; `/admin/usage` reports any range.",
            param="to",
        )
    group = by if by in _BY else "tenant"
    report = await usage.usage_report(
        request.app.state.engine,
        ["day", group],
        datetime.combine(first, datetime.min.time(), UTC),
        datetime.combine(last + timedelta(days=1), datetime.min.time(), UTC),
    )
    return report, {"from": first, "to": last, "by": group}  # dates print as 2026-12-01


def chart_data(report: UsageReport, group: str, first: date, last: date) -> dict[str, Any]:
    """Spend (USD) and audio hours per day for each tenant or model: what console.js draws
    (one point a day, so a day without calls is a zero, not a gap)."""
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    index = {day.isoformat(): n for n, day in enumerate(days)}
    spend: defaultdict[str, list[float]] = defaultdict(lambda: [0.0] * len(days))
    hours: defaultdict[str, list[float]] = defaultdict(lambda: [0.0] * len(days))
    for row in report.data:
        label = row.get(f"{group}_name") or row[group] or "(none)"
        n = index.get(row["day"])
        if n is not None:
            spend[label][n] += float(Decimal(row["cost_usd"]))
            hours[label][n] += float(Decimal(row["audio_seconds"]) / 3600)
    return {
        "days": [int(datetime.combine(day, datetime.min.time(), UTC).timestamp()) for day in days],
        "spend": dict(spend),
        "hours": dict(hours),
    }


def totals_by(rows: list[dict[str, Any]], group: str) -> list[dict[str, Any]]:
    """A usage report's ``rows`` added up by ``group`` (its id and name kept), costliest
    first."""
    totals: dict[Any, dict[str, Any]] = {}
    for row in rows:
        total = totals.setdefault(
            row[group],
            {
                "id": row[group],
                "name": row.get(f"{group}_name"),
                "calls": 0,
                "refused": 0,
                "audio_seconds": Decimal(0),
                "input_tokens": 0,
                "output_tokens": 0,
                "cost_usd": Decimal(0),
            },
        )
        total["calls"] += row["calls"]
        total["refused"] += row["refused"]
        total["audio_seconds"] += Decimal(row["audio_seconds"])
        total["input_tokens"] += row["input_text_tokens"] + row["input_audio_tokens"]
        total["output_tokens"] += row["output_tokens"]
        total["cost_usd"] += Decimal(row["cost_usd"])
    return sorted(totals.values(), key=lambda total: -total["cost_usd"])


@get("/usage")
async def usage_page(
    request: Request,
    start: From = None,
    end: To = None,
    by: FromQuery[str | None] = None,
) -> Response:
    report, chosen = await _report(request, start, end, by)
    return render(
        request,
        "usage.html",
        report=report,
        rows=totals_by(report.data, chosen["by"]),  # each day is in the charts and the CSV
        chosen=chosen,
        by_options=_BY,
        chart=chart_data(report, chosen["by"], chosen["from"], chosen["to"]),
    )


@get("/usage.csv")
async def usage_csv(
    request: Request,
    start: From = None,
    end: To = None,
    by: FromQuery[str | None] = None,
) -> Response:
    report, chosen = await _report(request, start, end, by)
    name = f"earmark-usage-{chosen['from']}-{chosen['to']}-by-{chosen['by']}.csv"
    return Response(
        usage.to_csv(report),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{name}"'},
    )


ROUTES = [usage_page, usage_csv]
