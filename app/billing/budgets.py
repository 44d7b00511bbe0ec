"""Budgets: hard USD caps on keys and tenants, per UTC calendar period or for life.

A call reserves the most it could cost against every budget on its path in one
transaction of conditional updates (never a read followed by a write) and is settled to
its actual cost afterwards. A period's counter row is keyed by the period's start, so a
new period is a new row: nothing resets at midnight, and nothing races there.
"""

from __future__ import annotations

import datetime as dt
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

import msgspec
from sqlalchemy import and_, bindparam, case, func, or_, select, true, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.billing.metering import NANOS_PER_USD, usd
from app.errors import EarmarkError, InvalidRequest, NotFound
from app.ids import new_id
from app.ops import audit
from app.ops.audit import Actor
from app.schemas import (
    Budget,
    BudgetCreate,
    BudgetEvent,
    BudgetPeriodSpend,
    BudgetUpdate,
    provided,
)
from app.storage import database
from app.storage.driver import Program, Statement, execute, fetch
from app.storage.models import UTCDateTime, budget_counters, budgets, ledger_holds

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_USD = 1_000_000_000
MAX_NANOS = MAX_USD * NANOS_PER_USD
# Limit plus top-ups of one period: spent + held + a hold then still fits a BIGINT.
MAX_PERIOD_NANOS = 4 * MAX_NANOS
_MONEY = re.compile(r"[0-9]{1,10}(\.[0-9]{1,9})?")
PERIODS = ("day", "week", "month", "none")


class BudgetExceeded(EarmarkError):
    status_code = 402
    error_type = "budget_exceeded"
    budget_id: str | None = None  # the budget that refused (budget.exhausted names it)


class BudgetBusy(EarmarkError):
    """The call fits once the calls in flight settle: retry soon (no x-should-retry: false)."""

    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self, budget_id: str, retry_after: int) -> None:
        super().__init__(
            f"Budget {budget_id} is held by calls in flight; this call fits once they "
            f"settle. Retry after {retry_after} s.",
            code="budget_busy",
            headers={"retry-after": str(retry_after)},
        )


class Hold(msgspec.Struct, frozen=True):
    budget_id: str
    period_start: datetime
    amount_nanos: int
    limit_nanos: int


def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime | None]:
    """The UTC period containing ``now``: [start, end). Weeks start on Monday."""
    return _bounds_on(period, now.astimezone(UTC).date())


@lru_cache(maxsize=64)
def _bounds_on(period: str, date: dt.date) -> tuple[datetime, datetime | None]:
    """``period_bounds`` by the UTC date, which is all they depend on: every call reads
    them (at auth, open and settle), and a date's bounds are the same all day."""
    if period == "none":
        return EPOCH, None
    day = datetime(date.year, date.month, date.day, tzinfo=UTC)
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    start = day.replace(day=1)
    return start, (start + timedelta(days=32)).replace(day=1)


def usd_to_nanos(text: str, param: str) -> int:
    """An amount as the API takes it: ASCII digits, at most 9 decimals, at most
    ``MAX_USD`` (so every sum of limits, top-ups and holds fits a 64-bit integer)."""
    if not _MONEY.fullmatch(text) or (nanos := int(Decimal(text) * NANOS_PER_USD)) > MAX_NANOS:
        raise InvalidRequest(
            f"`{param}` must be a USD amount from 0 to {MAX_USD:,} with at most 9 decimals, "
            f'as a string of ASCII digits such as "5.00"; got {text[:40]!r}.',
            param=param,
        )
    return nanos


def _check_headroom(budget_id: str, limit: int, top_up: int) -> None:
    """A period's limit and top-ups together stay within what the counters can add up."""
    if limit + top_up > MAX_PERIOD_NANOS:
        most = MAX_PERIOD_NANOS // NANOS_PER_USD
        raise InvalidRequest(
            f"Budget {budget_id}'s limit and top-ups would exceed ${most:,} in one period.",
            code="amount_too_large",
        )


def _on_path(key_id: str, tenant_id: str) -> Any:
    live = budgets.c.deleted_at.is_(None)
    return and_(live, or_(budgets.c.key_id == key_id, budgets.c.tenant_id == tenant_id))


def _at(budget_id: str, start: datetime) -> Any:
    """The counter row of one budget in one period."""
    return and_(budget_counters.c.budget_id == budget_id, budget_counters.c.period_start == start)


async def _counter(conn: AsyncConnection, budget_id: str, start: datetime) -> Any:
    return (await conn.execute(select(budget_counters).where(_at(budget_id, start)))).first()


def _counter_insert(dialect_insert: Any) -> Any:
    return (
        dialect_insert(budget_counters)
        .values(
            budget_id=bindparam("budget_id"),
            period_start=bindparam("start", type_=UTCDateTime()),
            spent_nanos=0,
            held_nanos=0,
            top_up_nanos=0,
        )
        .on_conflict_do_nothing()
    )


ENSURE_COUNTER = Statement(
    {"sqlite": _counter_insert(sqlite.insert), "postgresql": _counter_insert(postgresql.insert)}
)
_ON_PATH = Statement(
    select(budgets.c.id, budgets.c.period, budgets.c.limit_nanos)
    .where(_on_path(bindparam("key_id"), bindparam("tenant_id")))
    .order_by(budgets.c.id)
)
THIS_PERIOD = and_(
    budget_counters.c.budget_id == bindparam("budget_id"),
    budget_counters.c.period_start == bindparam("start", type_=UTCDateTime()),
)


def _fits(amount: Any) -> Any:
    """A counter's condition for holding ``amount`` more: spent + held + it within the
    budget's limit and this period's top-ups."""
    counter = budget_counters.c
    limit = select(budgets.c.limit_nanos).where(budgets.c.id == counter.budget_id)
    return counter.spent_nanos + counter.held_nanos + amount <= (
        limit.scalar_subquery() + counter.top_up_nanos
    )


# The conditional update: add to held only if spent + held + amount still fits.
_HOLD = Statement(
    update(budget_counters)
    .where(THIS_PERIOD, _fits(bindparam("amount")))
    .values(held_nanos=budget_counters.c.held_nanos + bindparam("amount"))
)
_COUNTER = Statement(
    select(
        budget_counters.c.spent_nanos, budget_counters.c.held_nanos, budget_counters.c.top_up_nanos
    ).where(THIS_PERIOD)
)


async def _ensure_counter(conn: AsyncConnection, budget_id: str, start: datetime) -> None:
    statement = ENSURE_COUNTER.for_dialect(conn.dialect.name)
    await conn.execute(statement, {"budget_id": budget_id, "start": start})


class NoRoom(Exception):
    """Raised inside the reservation (so its transaction rolls back): the call does not fit
    ``budget_id``; ``busy`` when it would once the calls in flight settle."""

    def __init__(self, budget_id: str, amount: int, busy: bool) -> None:
        super().__init__(budget_id)
        self.budget_id, self.amount, self.busy = budget_id, amount, busy


def on_path(key_id: str, tenant_id: str, amount: int, now: datetime) -> Program[list[Hold]]:
    """The holds a call of ``amount`` needs: one on each budget on the key's path, in the
    period containing ``now``, in budget id order. Reads only; ``holding`` takes them."""
    return [
        Hold(budget_id, period_bounds(period, now)[0], amount, limit_nanos)
        for budget_id, period, limit_nanos in (
            yield fetch(_ON_PATH, key_id=key_id, tenant_id=tenant_id)
        )
    ]


def holding(holds: list[Hold], *, expected: int | None = None) -> Program[None]:
    """Add each hold to its budget's counter, or raise ``NoRoom``: not busy when what is
    spent alone leaves no room on some budget, busy when every budget that refuses would
    fit the call (``expected`` on top of what is spent) once the calls in flight settle
    (``refusal`` words either).

    Counters are locked in budget id order so concurrent reservations never deadlock on
    PostgreSQL. The caller's transaction makes it all-or-nothing."""
    busy_budget = None
    for hold in holds:
        at = {"budget_id": hold.budget_id, "start": hold.period_start}
        if not (yield execute(_HOLD, amount=hold.amount_nanos, **at)):
            # Usually the period's counter exists; create it only when the hold found none.
            yield execute(ENSURE_COUNTER, **at)
            if not (yield execute(_HOLD, amount=hold.amount_nanos, **at)):
                ((spent, held, top_up),) = yield fetch(_COUNTER, **at)
                room = hold.limit_nanos + top_up - spent
                wanted = hold.amount_nanos if expected is None else expected
                if not (held and wanted <= room):
                    raise NoRoom(hold.budget_id, hold.amount_nanos, busy=False)
                # Busy here; a later budget may still refuse for good, which is the answer.
                busy_budget = busy_budget or hold.budget_id
    if busy_budget is not None:
        raise NoRoom(busy_budget, holds[0].amount_nanos, busy=True)


async def refusal(engine: AsyncEngine, no_room: NoRoom, retry_after: int) -> EarmarkError:
    """The 429 ``budget_busy`` or 402 ``budget_exceeded`` for a reservation that found no
    room, worded from the budget's state now."""
    if no_room.busy:
        return BudgetBusy(no_room.budget_id, retry_after)
    async with database.read(engine) as conn:
        budget = await _fetch(conn, no_room.budget_id)
        return _exceeded(budget, await _view(conn, budget, database.utcnow()), no_room.amount)


def _exceeded(budget: Any, view: Budget, amount: int | None) -> BudgetExceeded:
    """The refusal, worded from the budget's current view (what is left, when it resets);
    ``amount`` is what the call may cost, None when nothing can fit."""
    owner = f"key {budget.key_id}" if budget.key_id else f"tenant {budget.tenant_id}"
    per = "in total" if budget.period == "none" else f"per {budget.period}"
    resets = (
        f"It resets at {database.utc_text(view.period_end)}."
        if view.period_end
        else "It does not reset; an admin can raise it or top it up."
    )
    state = (
        "is used up"
        if amount is None
        else f"has ${view.remaining_usd} left, and this call may cost up to ${usd(amount)}"
    )
    refusal = BudgetExceeded(
        f"Budget {budget.id} (${view.limit_usd} {per} on {owner}) {state}. {resets}",
        code="budget_exceeded",
    )
    refusal.budget_id = budget.id
    return refusal


def period_starts(now: datetime) -> dict[str, datetime]:
    """The start of the current period of every kind, as ``exhausted_on_path`` binds them."""
    date = now.astimezone(UTC).date()
    return {f"{period}_start": _bounds_on(period, date)[0] for period in PERIODS}


def _period_start() -> Any:
    """A budget's current period start, chosen by its period from ``period_starts``."""
    return case(
        *[
            (budgets.c.period == period, bindparam(f"{period}_start", type_=UTCDateTime()))
            for period in PERIODS
        ]
    )


def alerting_on_path(key_id: Any, tenant_id: Any) -> Any:
    """A correlated EXISTS: a budget on the key's path has alert thresholds (its calls'
    settles then look for crossings, app/billing/alerts.py)."""
    return (
        select(budgets.c.id)
        .where(
            budgets.c.deleted_at.is_(None),
            or_(budgets.c.key_id == key_id, budgets.c.tenant_id == tenant_id),
            budgets.c.thresholds.is_not(None),
        )
        .exists()
    )


def exhausted_on_path(key_id: Any, tenant_id: Any) -> Any:
    """A correlated subquery: the id of a budget on the key's path whose spend alone
    already fills it this period (no call can fit until it resets), or NULL. It binds the
    ``period_starts`` of the moment, so that auth can refuse such a key before it reads a
    byte of the request."""
    counter = budget_counters.c
    start = _period_start()
    return (
        select(budgets.c.id)
        .select_from(
            budgets.outerjoin(
                budget_counters,
                and_(counter.budget_id == budgets.c.id, counter.period_start == start),
            )
        )
        .where(
            budgets.c.deleted_at.is_(None),
            or_(budgets.c.key_id == key_id, budgets.c.tenant_id == tenant_id),
            func.coalesce(counter.spent_nanos, 0)
            >= budgets.c.limit_nanos + func.coalesce(counter.top_up_nanos, 0),
        )
        .limit(1)
        .scalar_subquery()
    )


async def used_up(engine: AsyncEngine, budget_id: str) -> BudgetExceeded:
    """The 402 for a call refused by ``exhausted_on_path``."""
    async with database.read(engine) as conn:
        budget = (await conn.execute(select(budgets).where(budgets.c.id == budget_id))).one()
        return _exceeded(budget, await _view(conn, budget, database.utcnow()), None)


# The counters a call holds, locked in budget order as the reservation locked them: an
# UPDATE ... FROM locks them in whatever order its plan visits them, and two settles (or a
# settle and a reservation) taking two budgets in opposite orders deadlock.
_LOCK_HELD = Statement(
    {
        "postgresql": select(budget_counters.c.budget_id)
        .select_from(
            budget_counters.join(
                ledger_holds,
                and_(
                    budget_counters.c.budget_id == ledger_holds.c.budget_id,
                    budget_counters.c.period_start == ledger_holds.c.period_start,
                ),
            )
        )
        .where(ledger_holds.c.ledger_id == bindparam("call_id"))
        .order_by(budget_counters.c.budget_id)
        .with_for_update(of=budget_counters),
        "sqlite": select(ledger_holds.c.budget_id).where(  # BEGIN IMMEDIATE serialises
            ledger_holds.c.ledger_id == bindparam("call_id")
        ),
    }
)


def _held_by(call_id: Any) -> Any:
    """The counters a call holds, as an UPDATE ... FROM its ledger_holds rows joins them."""
    return and_(
        ledger_holds.c.ledger_id == call_id,
        budget_counters.c.budget_id == ledger_holds.c.budget_id,
        budget_counters.c.period_start == ledger_holds.c.period_start,
    )


# Move a call's holds to spent at its actual cost (0 releases them), in one statement over
# the holds the call recorded (UPDATE ... FROM). On PostgreSQL the same statement first
# locks them in budget order (a materialized CTE of ``_LOCK_HELD``): no separate locking
# round trip while other calls wait on those counters.
def _settle_counters(dialect: str) -> Any:
    """The UPDATE that settles call ``call_id``'s counters at ``actual``."""
    counter = budget_counters.c
    statement = update(budget_counters).where(_held_by(bindparam("call_id")))
    if dialect == "postgresql":
        locked = _LOCK_HELD.for_dialect(dialect).cte("locked").prefix_with("MATERIALIZED")
        statement = statement.where(counter.budget_id.in_(select(locked.c.budget_id)))
    return statement.values(
        held_nanos=counter.held_nanos - ledger_holds.c.amount_nanos,
        spent_nanos=counter.spent_nanos + bindparam("actual"),
    )


_SETTLE = Statement({dialect: _settle_counters(dialect) for dialect in ("postgresql", "sqlite")})


# Raise every hold of a call by ``extra``, on the counters where it still fits.
_RAISE = Statement(
    update(budget_counters)
    .where(_held_by(bindparam("call_id")), _fits(bindparam("extra")))
    .values(held_nanos=budget_counters.c.held_nanos + bindparam("extra"))
)
_RAISE_HOLDS = Statement(
    update(ledger_holds)
    .where(ledger_holds.c.ledger_id == bindparam("call_id"))
    .values(amount_nanos=ledger_holds.c.amount_nanos + bindparam("extra"))
)


def raising(call_id: str, extra: int) -> Program[None]:
    """Hold ``extra`` more for an open call on every budget it holds, or raise ``NoRoom``
    (the caller's transaction rolls back)."""
    held = yield fetch(_LOCK_HELD, call_id=call_id)
    if (yield execute(_RAISE, call_id=call_id, extra=extra)) != len(held):
        raise NoRoom(held[0][0] if held else "", extra, busy=False)
    yield execute(_RAISE_HOLDS, call_id=call_id, extra=extra)


def settling(call_id: str, actual: int) -> Program[None]:
    yield execute(_SETTLE, call_id=call_id, actual=actual)


async def lock_held_by(conn: AsyncConnection, call_ids: list[str]) -> None:
    """Lock every counter these calls hold, in one global order (a settle of each then
    takes only locks it has): several calls settled in one transaction (the sweeper)
    never deadlock with the call path or another sweeper."""
    if conn.dialect.name != "postgresql" or not call_ids:
        return  # SQLite's BEGIN IMMEDIATE serialises writers
    counter = budget_counters.c
    await conn.execute(
        select(counter.budget_id)
        .join_from(
            budget_counters,
            ledger_holds,
            and_(
                counter.budget_id == ledger_holds.c.budget_id,
                counter.period_start == ledger_holds.c.period_start,
            ),
        )
        .where(ledger_holds.c.ledger_id.in_(call_ids))
        .order_by(counter.budget_id, counter.period_start)
        .with_for_update(of=budget_counters)
    )


async def settle(conn: AsyncConnection, call_id: str, actual: int) -> None:
    statement = _SETTLE.for_dialect(conn.dialect.name)
    await conn.execute(statement, {"call_id": call_id, "actual": actual})


async def correct(conn: AsyncConnection, ledger_id: str, delta: int) -> None:
    """Change what a settled call was charged by ``delta`` in every period it held in."""
    counter = budget_counters.c
    await conn.execute(_LOCK_HELD.for_dialect(conn.dialect.name), {"call_id": ledger_id})
    await conn.execute(
        update(budget_counters)
        .where(_held_by(ledger_id))
        .values(spent_nanos=counter.spent_nanos + delta)
    )


# --- Admin operations ------------------------------------------------------------------


async def add_budget(
    conn: AsyncConnection,
    data: BudgetCreate,
    actor: Actor,
    *,
    key_id: str | None = None,
    tenant_id: str | None = None,
) -> str:
    now = database.utcnow()
    budget_id = new_id("bud")
    await conn.execute(
        budgets.insert().values(
            id=budget_id,
            key_id=key_id,
            tenant_id=tenant_id,
            limit_nanos=usd_to_nanos(data.limit_usd, "limit_usd"),
            period=data.period,
            thresholds=_thresholds(data.thresholds),
            created_at=now,
            updated_at=now,
        )
    )
    view = await _view(conn, await _fetch(conn, budget_id), now)
    details = {"limit_usd": data.limit_usd, "period": data.period, "thresholds": data.thresholds}
    await audit.record(conn, actor, "budget.create", budget_id, after=view, details=details)
    return budget_id


async def _view(conn: AsyncConnection, budget: Any, now: datetime) -> Budget:
    counter = await _counter(conn, budget.id, period_bounds(budget.period, now)[0])
    return _to_api(budget, counter, now)


async def _views(conn: AsyncConnection, condition: Any, now: datetime) -> list[Budget]:
    """The budgets ``condition`` selects, each with its current period, in one query."""
    counter = budget_counters.c
    query = (
        select(budgets, counter.spent_nanos, counter.held_nanos, counter.top_up_nanos)
        .select_from(
            budgets.outerjoin(
                budget_counters,
                and_(counter.budget_id == budgets.c.id, counter.period_start == _period_start()),
            )
        )
        .where(budgets.c.deleted_at.is_(None), condition)
        .order_by(budgets.c.id)
    )
    rows = (await conn.execute(query, period_starts(now))).all()
    return [_to_api(row, row if row.spent_nanos is not None else None, now) for row in rows]


def _to_api(budget: Any, counter: Any, now: datetime) -> Budget:
    """A budget as the API shows it, from its row and its current period's counter."""
    start, end = period_bounds(budget.period, now)
    spent, held, top_up = (
        (counter.spent_nanos, counter.held_nanos, counter.top_up_nanos) if counter else (0, 0, 0)
    )
    remaining = max(budget.limit_nanos + top_up - spent - held, 0)
    return Budget(
        id=budget.id,
        owner="key" if budget.key_id else "tenant",
        key_id=budget.key_id,
        tenant_id=budget.tenant_id,
        limit_usd=usd(budget.limit_nanos),
        period=budget.period,
        period_start=start,
        period_end=end,
        spent_usd=usd(spent),
        held_usd=usd(held),
        top_up_usd=usd(top_up),
        remaining_usd=usd(remaining),
        thresholds=list(budget.thresholds or []),
        created_at=budget.created_at,
        updated_at=budget.updated_at,
    )


async def _fetch(conn: AsyncConnection, budget_id: str) -> Any:
    row = (
        await conn.execute(
            select(budgets).where(budgets.c.id == budget_id, budgets.c.deleted_at.is_(None))
        )
    ).first()
    if row is None:
        raise NotFound(f"no budget with id {budget_id!r}", code="budget_not_found")
    return row


async def create_budget(
    engine: AsyncEngine,
    data: BudgetCreate,
    actor: Actor,
    *,
    key_id: str | None = None,
    tenant_id: str | None = None,
) -> Budget:
    """A budget on a key or a tenant (404 if it does not exist), as the API shows it."""
    from app.access import keys, tenants  # they import this module

    if key_id is not None:
        await keys.get_key(engine, key_id)
    else:
        await tenants.get_tenant(engine, tenant_id or "")
    async with database.write(engine) as conn:
        budget_id = await add_budget(conn, data, actor, key_id=key_id, tenant_id=tenant_id)
    return await get_budget(engine, budget_id)


async def views_on_path(conn: AsyncConnection, key_id: str, tenant_id: str) -> list[Budget]:
    return await _views(conn, _on_path(key_id, tenant_id), database.utcnow())


async def list_budgets(
    engine: AsyncEngine, *, key_id: str | None, tenant_id: str | None
) -> list[Budget]:
    conditions = []
    if key_id:
        conditions.append(budgets.c.key_id == key_id)
    if tenant_id:
        conditions.append(budgets.c.tenant_id == tenant_id)
    async with database.read(engine) as conn:
        return await _views(conn, and_(true(), *conditions), database.utcnow())


async def get_budget(engine: AsyncEngine, budget_id: str) -> Budget:
    async with database.read(engine) as conn:
        return await _view(conn, await _fetch(conn, budget_id), database.utcnow())


async def update_budget(
    engine: AsyncEngine, budget_id: str, data: BudgetUpdate, actor: Actor
) -> Budget:
    """A new limit, new alert thresholds, or both. Thresholds a period has already
    announced are not announced again in it."""
    given = provided(data)
    changes: dict[str, Any] = {}
    if "limit_usd" in given:
        changes["limit_nanos"] = usd_to_nanos(data.limit_usd, "limit_usd")  # type: ignore[arg-type]
    if "thresholds" in given:
        changes["thresholds"] = _thresholds(data.thresholds)  # type: ignore[arg-type]
    now = database.utcnow()
    async with database.write(engine) as conn:
        budget = await _fetch(conn, budget_id)
        if "limit_nanos" in changes:
            counter = await _counter(conn, budget_id, period_bounds(budget.period, now)[0])
            _check_headroom(
                budget_id, changes["limit_nanos"], counter.top_up_nanos if counter else 0
            )
        before = await _view(conn, budget, now)
        await conn.execute(
            update(budgets)
            .where(budgets.c.id == budget_id)
            .values(**changes, updated_at=database.utcnow())
        )
        return await _audited(conn, actor, "update", before, now, given)


def _thresholds(percents: list[int]) -> list[int] | None:
    return sorted(set(percents)) or None


async def top_up(engine: AsyncEngine, budget_id: str, amount_usd: str, actor: Actor) -> Budget:
    """Grant extra spend for the current period only."""
    amount = usd_to_nanos(amount_usd, "amount_usd")
    now = database.utcnow()
    async with database.write(engine) as conn:
        budget = await _fetch(conn, budget_id)
        start, _ = period_bounds(budget.period, now)
        counter = await _counter(conn, budget_id, start)
        _check_headroom(
            budget_id, budget.limit_nanos, (counter.top_up_nanos if counter else 0) + amount
        )
        before = await _view(conn, budget, now)
        await _ensure_counter(conn, budget_id, start)
        await conn.execute(
            update(budget_counters)
            .where(_at(budget_id, start))
            .values(top_up_nanos=budget_counters.c.top_up_nanos + amount, exhausted_alerted=False)
        )
        return await _audited(conn, actor, "top_up", before, now, {"amount_usd": amount_usd})


async def reset(engine: AsyncEngine, budget_id: str, actor: Actor) -> Budget:
    """Forget the current period's spend (calls in flight keep their holds)."""
    now = database.utcnow()
    async with database.write(engine) as conn:
        before = await _view(conn, await _fetch(conn, budget_id), now)
        start = before.period_start
        # Its alerts are announced afresh as spend builds up again.
        await conn.execute(
            update(budget_counters)
            .where(_at(budget_id, start))
            .values(spent_nanos=0, alerted_percent=0, exhausted_alerted=False)
        )
        details = {"period_start": database.utc_text(start)}
        return await _audited(conn, actor, "reset", before, now, details)


async def delete_budget(engine: AsyncEngine, budget_id: str, actor: Actor) -> None:
    now = database.utcnow()
    async with database.write(engine) as conn:
        before = await _view(conn, await _fetch(conn, budget_id), now)
        await conn.execute(update(budgets).where(budgets.c.id == budget_id).values(deleted_at=now))
        await audit.record(conn, actor, "budget.delete", budget_id, before=before, details={})


async def _audited(
    conn: AsyncConnection,
    actor: Actor,
    verb: str,
    before: Budget,
    now: datetime,
    details: dict[str, Any],
) -> Budget:
    """The budget as it is now, once its change from ``before`` is in the audit trail."""
    after = await _view(conn, await _fetch(conn, before.id), now)
    await audit.record(
        conn, actor, f"budget.{verb}", before.id, before=before, after=after, details=details
    )
    return after


async def periods(engine: AsyncEngine, budget_id: str) -> list[BudgetPeriodSpend]:
    """Spend of every period the budget has seen, newest first."""
    async with database.read(engine) as conn:
        await _fetch(conn, budget_id)
        rows = (
            await conn.execute(
                select(budget_counters)
                .where(budget_counters.c.budget_id == budget_id)
                .order_by(budget_counters.c.period_start.desc())
            )
        ).all()
    return [
        BudgetPeriodSpend(
            period_start=row.period_start,
            spent_usd=usd(row.spent_nanos),
            held_usd=usd(row.held_nanos),
            top_up_usd=usd(row.top_up_nanos),
        )
        for row in rows
    ]


async def events(engine: AsyncEngine, budget_id: str) -> list[BudgetEvent]:
    """The budget's part of the audit trail, oldest first."""
    await get_budget(engine, budget_id)
    return [
        BudgetEvent(
            id=entry.id,
            action=entry.action.removeprefix("budget."),
            actor=entry.actor,
            details=entry.details or {},
            created_at=entry.created_at,
        )
        for entry in await audit.for_target(engine, budget_id)
    ]
