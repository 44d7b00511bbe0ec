"""The console's first page: spend today and this month, the top tenants and keys by
cost, and the budgets closest to their limit, each a link to its page."""

from __future__ import annotations

from decimal import Decimal

from litestar import Request, Response, get

from app.billing import budgets, usage
from app.console.format import used_percent
from app.console.gate import render
from app.console.usage import totals_by
from app.storage import database

TOP = 5


@get("/")
async def overview(request: Request) -> Response:
    engine, now = request.app.state.engine, database.utcnow()
    day_start, _ = budgets.period_bounds("day", now)
    month_start, _ = budgets.period_bounds("month", now)
    today = await usage.usage_report(engine, [], day_start, None)
    # One pass over the month, by key: tenants' totals are sums of their keys'.
    month = await usage.usage_report(engine, ["tenant", "key"], month_start, None)
    every_budget = await budgets.list_budgets(engine, key_id=None, tenant_id=None)
    closest = sorted(every_budget, key=lambda budget: -used_percent(budget))
    return render(
        request,
        "overview.html",
        today=today.totals,
        month=month.totals,
        top_tenants=totals_by(month.data, "tenant")[:TOP],
        top_keys=sorted(month.data, key=lambda row: -Decimal(row["cost_usd"]))[:TOP],
        closest=closest[:TOP],
    )


ROUTES = [overview]
