"""The console's first page: spend today and this month, the top tenants and keys by
cost, and the budgets closest to their limit, each a link to its page."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

from litestar import Request, Response, get

from app import budgets, database, usage
from app.console.format import used_percent
from app.console.gate import render

TOP = 5


@get("/")
async def overview(request: Request) -> Response:
    engine, now = request.app.state.engine, database.utcnow()
    day_start, _ = budgets.period_bounds("day", now)
    month_start, _ = budgets.period_bounds("month", now)
    today = await usage.usage_report(engine, [], day_start, None)
    # One pass over the month, by key: tenants' totals are sums of their keys'.
    month = await usage.usage_report(engine, ["tenant", "key"], month_start, None)
    by_tenant: defaultdict[str, dict[str, Any]] = defaultdict(
        lambda: {"cost": Decimal(0), "calls": 0, "audio_seconds": Decimal(0)}
    )
    for row in month.data:
        tenant = by_tenant[row["tenant"]]
        tenant.update(id=row["tenant"], name=row["tenant_name"])
        tenant["cost"] += Decimal(row["cost_usd"])
        tenant["calls"] += row["calls"]
        tenant["audio_seconds"] += Decimal(row["audio_seconds"])
    every_budget = await budgets.list_budgets(engine, key_id=None, tenant_id=None)
    closest = sorted(
        every_budget,
        key=lambda b: -used_percent(b.spent_usd, b.held_usd, b.limit_usd, b.top_up_usd),
    )
    return render(
        request,
        "overview.html",
        today=today.totals,
        month=month.totals,
        top_tenants=sorted(by_tenant.values(), key=lambda t: -t["cost"])[:TOP],
        top_keys=sorted(month.data, key=lambda row: -Decimal(row["cost_usd"]))[:TOP],
        closest=closest[:TOP],
    )


ROUTES = [overview]
