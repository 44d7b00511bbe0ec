"""What the ledger's changes announce: webhook events written in the same transaction.

``crossing`` runs after a call's counters are charged (the settle, the sweeper, a
journal's correction): each budget the call held whose spend now reaches thresholds above
the highest this period already announced announces them, ``budget.threshold`` once per
threshold and period. The announcement is a conditional update of the period's counter,
whose row the charge has just locked, so two processes settling at once cannot both
announce it. ``exhausting`` runs with a 402's ledger row: the first of a period sends
``budget.exhausted``. ``reviewing`` runs with a settle or a sweep that flags a call for
review (an uncertain attempt charged, a hold overrun, a lost worker): ``call.review``.
All are programs, so the call path runs them on the bare drivers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, func, select, update

from app.billing.budgets import ENSURE_COUNTER, THIS_PERIOD, period_bounds
from app.billing.metering import usd
from app.ops import webhooks
from app.storage import database
from app.storage.driver import Program, Statement, execute, fetch, json, utc
from app.storage.models import api_keys, budget_counters, budgets, ledger, ledger_holds

_BUDGET_COLUMNS = (
    budgets.c.id,
    budgets.c.key_id,
    func.coalesce(budgets.c.tenant_id, api_keys.c.tenant_id).label("tenant_id"),
    budgets.c.limit_nanos,
    budgets.c.period,
    budgets.c.thresholds,
)
_COUNTER_COLUMNS = (
    budget_counters.c.period_start,
    budget_counters.c.spent_nanos,
    budget_counters.c.top_up_nanos,
    budget_counters.c.alerted_percent,
)
_WITH_KEY = budgets.outerjoin(api_keys, api_keys.c.id == budgets.c.key_id)

# The counters a call charged, of budgets that have thresholds.
_CHARGED = Statement(
    select(*_BUDGET_COLUMNS, *_COUNTER_COLUMNS)
    .select_from(
        ledger_holds.join(
            budget_counters,
            and_(
                budget_counters.c.budget_id == ledger_holds.c.budget_id,
                budget_counters.c.period_start == ledger_holds.c.period_start,
            ),
        ).join(_WITH_KEY, budgets.c.id == budget_counters.c.budget_id)
    )
    .where(
        ledger_holds.c.ledger_id == bindparam("call_id"),
        budgets.c.thresholds.is_not(None),
        budgets.c.deleted_at.is_(None),
    )
)
_ANNOUNCE = Statement(
    update(budget_counters)
    .where(THIS_PERIOD, budget_counters.c.alerted_percent < bindparam("percent"))
    .values(alerted_percent=bindparam("percent"))
)
_BUDGET = Statement(
    select(*_BUDGET_COLUMNS)
    .select_from(_WITH_KEY)
    .where(budgets.c.id == bindparam("budget_id"), budgets.c.deleted_at.is_(None))
)
_FIRST_REFUSAL = Statement(
    update(budget_counters)
    .where(THIS_PERIOD, budget_counters.c.exhausted_alerted.is_(False))
    .values(exhausted_alerted=True)
)
_COUNTER = Statement(select(*_COUNTER_COLUMNS).where(THIS_PERIOD))


def _budget(budget: Any, counter: Any) -> dict[str, Any]:
    """The budget and its period as an event shows them: amounts as decimal strings."""
    return {
        "id": budget.id,
        "owner": "key" if budget.key_id else "tenant",
        "key_id": budget.key_id,
        "tenant_id": budget.tenant_id,
        "limit_usd": usd(budget.limit_nanos),
        "period": budget.period,
        "period_start": database.utc_text(utc(counter.period_start)),
        "spent_usd": usd(counter.spent_nanos),
        "top_up_usd": usd(counter.top_up_nanos),
    }


def crossing(call_id: str) -> Program[None]:
    """Announce the thresholds the budgets ``call_id`` held have reached (after its charge)."""
    for row in (yield fetch(_CHARGED, call_id=call_id)):
        cap = row.limit_nanos + row.top_up_nanos
        reached = [
            percent
            for percent in json(row.thresholds)
            if percent > row.alerted_percent and row.spent_nanos * 100 >= percent * cap
        ]
        if cap <= 0 or not reached:
            continue
        announced = yield execute(
            _ANNOUNCE, budget_id=row.id, start=row.period_start, percent=max(reached)
        )
        if announced != 1:
            continue
        for percent in sorted(reached):
            data = {"budget": _budget(row, row), "threshold_percent": percent}
            yield from webhooks.emitting("budget.threshold", row.tenant_id, data)


def exhausting(budget_id: str, now: datetime) -> Program[None]:
    """Announce ``budget_id``'s refusal of a call if it is the first of the period."""
    found = yield fetch(_BUDGET, budget_id=budget_id)
    if not found:
        return
    budget = found[0]
    start = period_bounds(budget.period, now)[0]
    yield execute(ENSURE_COUNTER, budget_id=budget_id, start=start)
    if (yield execute(_FIRST_REFUSAL, budget_id=budget_id, start=start)) != 1:
        return
    (counter,) = yield fetch(_COUNTER, budget_id=budget_id, start=start)
    data = {"budget": _budget(budget, counter)}
    yield from webhooks.emitting("budget.exhausted", budget.tenant_id, data)


_REVIEWED = Statement(
    select(
        ledger.c.id,
        ledger.c.key_id,
        ledger.c.tenant_id,
        ledger.c.model_requested,
        ledger.c.provider,
        ledger.c.status,
        ledger.c.http_status,
        ledger.c.review,
        ledger.c.cost_nanos,
        ledger.c.created_at,
    ).where(ledger.c.id == bindparam("call_id"), ledger.c.review.is_not(None))
)


def reviewing(call_id: str) -> Program[None]:
    """Announce that ``call_id`` was flagged for review (if it was)."""
    for row in (yield fetch(_REVIEWED, call_id=call_id)):
        call = {
            "id": row.id,
            "key_id": row.key_id,
            "tenant_id": row.tenant_id,
            "model": row.model_requested,
            "provider": row.provider,
            "status": row.status,
            "http_status": row.http_status,
            "review": row.review,
            "cost_usd": usd(row.cost_nanos),
            "created_at": database.utc_text(utc(row.created_at)),
        }
        yield from webhooks.emitting("call.review", row.tenant_id, {"call": call})
