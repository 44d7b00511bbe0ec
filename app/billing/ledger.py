"""The usage ledger: one row per metered call, and the sweeper that finishes orphans.

A row is written together with its budget holds, in one transaction, as ``forwarded``
when the call goes upstream next (``reserved`` when the cache answers it instead), and
settled once after: ``succeeded``, ``failed`` (charged only for uncertain attempts) or
``interrupted`` (the client left mid-stream). A call refused before going upstream is
written once as ``rejected``. Just before an attempt's last request bytes go, the row
is marked ``sent_at``. Rows whose worker died are finished by ``sweep``: a cache hit's,
or a call no provider had whole, is ``released``; other forwarded rows are charged
their expected cost and marked ``expired`` for review, since the provider may have
billed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import (
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.billing import alerts, budgets, rate_limits
from app.billing.metering import Usage, usd
from app.pagination import paginate, split_page
from app.schemas import RateLimits
from app.storage import database
from app.storage.driver import Program, Statement, execute, execute_many, fetch, run_on
from app.storage.models import OPEN_ROWS, ledger, ledger_holds, upstream_attempts


class Opening(msgspec.Struct, kw_only=True):
    """What is known of a call when it is opened or refused."""

    id: str
    key_id: str
    tenant_id: str
    endpoint: str
    model_requested: str
    response_format: str | None = None
    stream: bool = False
    upload_bytes: int | None = None
    probed_audio_ms: int | None = None
    expected_nanos: int = 0
    hold_nanos: int = 0


class AttemptRecord(msgspec.Struct, kw_only=True):
    """One upstream attempt of a call, as ``upstream_attempts`` keeps it."""

    n: int
    provider: str
    model: str
    started_at: datetime
    outcome: str  # answered | refused | failed | uncertain
    http_status: int | None
    error: str | None
    bytes_sent: int
    latency_ms: int
    charged_nanos: int


class Settlement(msgspec.Struct, kw_only=True):
    status: str
    http_status: int
    provider: str | None
    model: str | None
    attempts: int
    usage: Usage = Usage()
    usage_source: str | None = None
    cost_nanos: int = 0
    review: str | None = None  # uncertain | hold_overrun | worker_lost
    latency_ms: int
    upstream_latency_ms: int | None = None
    error_code: str | None = None
    attempt_records: list[AttemptRecord] = []


class Call(msgspec.Struct, kw_only=True):
    """A ledger row as the admin API shows it."""

    id: str
    key_id: str
    tenant_id: str
    endpoint: str
    status: str
    http_status: int | None
    error_code: str | None
    model_requested: str
    provider: str | None
    model: str | None
    attempts: int
    response_format: str | None
    stream: bool
    upload_bytes: int | None
    probed_audio_ms: int | None
    audio_ms: int | None
    input_text_tokens: int | None
    input_audio_tokens: int | None
    output_tokens: int | None
    total_tokens: int | None
    usage_source: str | None
    review: str | None
    replays: int  # retries with its Idempotency-Key answered with its answer, unbilled
    cost_usd: str
    expected_usd: str
    hold_usd: str
    latency_ms: int | None
    upstream_latency_ms: int | None
    created_at: datetime
    completed_at: datetime | None
    upstream_attempts: list[AttemptRecord] = []


class CallPage(msgspec.Struct, kw_only=True):
    data: list[Call]
    next_cursor: str | None


def _usage_columns(usage: Usage) -> dict[str, Any]:
    return {
        "audio_ms": usage.audio_ms,
        "input_text_tokens": usage.input_text_tokens,
        "input_audio_tokens": usage.input_audio_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
    }


_ROW_COLUMNS = [
    *Opening.__struct_fields__,
    *("attempts", "cost_nanos", "status", "provider", "model", "http_status", "error_code"),
    *("latency_ms", "created_at", "completed_at"),
]
_INSERT_ROW = Statement(insert(ledger), columns=_ROW_COLUMNS)
_INSERT_HOLDS = Statement(
    insert(ledger_holds), columns=["ledger_id", "budget_id", "period_start", "amount_nanos"]
)
_INSERT_ATTEMPTS = Statement(
    insert(upstream_attempts), columns=["call_id", *AttemptRecord.__struct_fields__]
)
_SETTLED_COLUMNS = [
    *(name for name in Settlement.__struct_fields__ if name not in ("usage", "attempt_records")),
    *("audio_ms", "input_text_tokens", "input_audio_tokens", "output_tokens", "total_tokens"),
    "completed_at",
]
# Bound as v_<column>: a SET column's own name is reserved for SQLAlchemy's VALUES.
_SETTLE_ROW = Statement(
    update(ledger)
    .where(ledger.c.id == bindparam("call_id"), OPEN_ROWS)
    .values({name: bindparam(f"v_{name}", type_=ledger.c[name].type) for name in _SETTLED_COLUMNS})
)


_MARK_SENT_ROW = (
    update(ledger)
    .where(ledger.c.id == bindparam("call_id"), ledger.c.status == "forwarded")
    .values(sent_at=func.coalesce(ledger.c.sent_at, bindparam("now", type_=ledger.c.sent_at.type)))
)
# On PostgreSQL the mark's commit does not wait for its WAL to reach the disk (a fsync,
# most of the mark's time): the server has the mark as soon as it answers, so the
# gateway's death cannot lose it, and the WAL writer or the next commit that waits (the
# call's own settle at the latest) flushes it. Only a crash of the database server
# within that flush could lose it, and then the gateway still settles the call as it
# happened; its row would be released unbilled only if the gateway died too.
_MARK_SENT = Statement(
    {
        "postgresql": _MARK_SENT_ROW.where(
            text("set_config('synchronous_commit', 'off', true) IS NOT NULL")
        ),
        "sqlite": _MARK_SENT_ROW,
    }
)


def _row(opening: Opening, **columns: Any) -> dict[str, Any]:
    return {
        **dict.fromkeys(_ROW_COLUMNS),
        **msgspec.structs.asdict(opening),
        "attempts": 0,
        "cost_nanos": 0,
        **columns,
    }


def _opening(
    opening: Opening, row: dict[str, Any], now: datetime, limits: RateLimits | None
) -> Program[None]:
    if limits is not None:
        yield from rate_limits.admitting(opening.key_id, limits, opening.probed_audio_ms or 0, now)
    holds = yield from budgets.on_path(opening.key_id, opening.tenant_id, opening.hold_nanos, now)
    # Before the writes: a refusal leaves no row behind to roll back.
    yield from budgets.holding(holds, expected=opening.expected_nanos)
    yield execute(_INSERT_ROW, **row)
    if holds:
        yield execute_many(
            _INSERT_HOLDS,
            [
                {
                    "ledger_id": opening.id,
                    "budget_id": hold.budget_id,
                    "period_start": hold.period_start,
                    "amount_nanos": hold.amount_nanos,
                }
                for hold in holds
            ],
        )


# PostgreSQL's opening without rate limits, for the calls this process opens while one
# opening is in flight (``Store.together``): ``earmark_open`` (migration d4a7e9b1c3f6)
# holds every budget on each call's path and writes the rows with their holds, in one
# statement and one commit, or, if a budget had no room, ends with an ``EM001`` error
# that undoes all of it.
_OPEN_TOGETHER = Statement(
    {
        "postgresql": select(
            func.earmark_open(bindparam("openings", type_=postgresql.JSONB)).label("opened")
        )
    }
)


def _opening_together(openings: list[dict[str, Any]]) -> Program[list[None]]:
    yield fetch(_OPEN_TOGETHER, openings=openings)
    return [None] * len(openings)


_NO_ROOM = "EM001"  # earmark_no_room()'s SQLSTATE (migration 9f3b7c2e5a10)


async def open_call(
    engine: AsyncEngine,
    opening: Opening,
    provider: str,
    model: str,
    now: datetime | None = None,
    limits: RateLimits | None = None,
    retry_after: int = 1,
    status: str = "forwarded",
) -> None:
    """Admit the call under its key's rate limits, hold its maximum cost on every budget
    on its path and write its row (``forwarded``, or ``reserved`` for a cache hit), in one
    transaction: all or nothing (``rate_limits.RateLimited``, ``budgets.BudgetExceeded``,
    ``budgets.BudgetBusy``). The holds name their periods, so settling later charges the
    period the call was reserved in."""
    now = now or database.utcnow()
    store = database.store(engine)
    row = _row(opening, status=status, provider=provider, model=model, created_at=now)
    if limits is None and store.dialect.name == "postgresql":
        given = {**row, **budgets.period_starts(now)}
        try:
            return await store.together("open", given, _opening_together)
        except DBAPIError as error:
            if getattr(error.orig, "sqlstate", None) != _NO_ROOM:
                raise
            # Nothing stayed; the program below finds which budget refused, and why (or
            # makes this period's counter, the first time a budget is used in it).
    try:
        await store.write(lambda: _opening(opening, row, now, limits))
    except budgets.NoRoom as no_room:
        raise await budgets.refusal(engine, no_room, retry_after) from None


def _settled_columns(settlement: Settlement) -> dict[str, Any]:
    """The ledger columns a settlement sets (``_SETTLED_COLUMNS``), by name."""
    values = msgspec.structs.asdict(settlement)
    values.update(_usage_columns(values.pop("usage")))
    del values["attempt_records"]
    values["completed_at"] = database.utcnow()
    return values


def _attempt_rows(call_id: str, settlement: Settlement) -> list[dict[str, Any]]:
    return [
        {"call_id": call_id, **msgspec.structs.asdict(record)}
        for record in settlement.attempt_records
    ]


def _settle_row_params(call_id: str, settlement: Settlement) -> dict[str, Any]:
    """``_SETTLE_ROW``'s parameters (each settled column bound as ``v_<name>``)."""
    values = _settled_columns(settlement)
    return {"call_id": call_id, **{f"v_{name}": value for name, value in values.items()}}


def _settling(call_id: str, settlement: Settlement, alerting: bool) -> Program[bool]:
    if (yield execute(_SETTLE_ROW, **_settle_row_params(call_id, settlement))) != 1:
        return False
    if settlement.attempt_records:
        yield execute_many(_INSERT_ATTEMPTS, _attempt_rows(call_id, settlement))
    yield from budgets.settling(call_id, settlement.cost_nanos)
    if alerting:
        yield from alerts.crossing(call_id)
    if settlement.review:
        yield from alerts.reviewing(call_id)
    return True


# PostgreSQL's settlement of several calls in one statement (migration 6c1e8f3a2d95): each
# row still open settled with its attempts, each counter they held charged once for all
# of them; it answers the ids of the rows it settled.
_SETTLE_TOGETHER = Statement(
    {
        "postgresql": select(
            func.earmark_settle(bindparam("settlements", type_=postgresql.JSONB))
            .table_valued("id")
            .render_derived("settled")
            .c.id
        )
    }
)


def _settling_together(calls: list[tuple[str, Settlement]]) -> Program[list[bool]]:
    given = [
        {
            "call_id": call_id,
            **_settled_columns(settlement),
            "attempt_records": [msgspec.structs.asdict(r) for r in settlement.attempt_records],
        }
        for call_id, settlement in calls
    ]
    settled = {call_id for (call_id,) in (yield fetch(_SETTLE_TOGETHER, settlements=given))}
    answers = []
    for call_id, _ in calls:
        answers.append(call_id in settled)
        settled.discard(call_id)  # asked twice: settled once
    return answers


async def settle_call(
    engine: AsyncEngine, call_id: str, settlement: Settlement, *, alerting: bool = False
) -> bool:
    """Settle an open call once, moving its holds to spent at the actual cost (a failed
    call's cost is 0, which releases them); False if it was already settled or swept.
    ``alerting`` (a budget on the path has thresholds): announce what the charge crossed,
    in the same transaction, as a call for review is. Without either, PostgreSQL settles
    it in one statement, with the other calls this process asks to settle while one is in
    flight (``Store.together``): under load, one commit and one lock of each budget's
    counter for several calls."""
    store = database.store(engine)
    if alerting or settlement.review or store.dialect.name != "postgresql":
        return await store.write(lambda: _settling(call_id, settlement, alerting), under_way=True)
    return await store.together("settle", (call_id, settlement), _settling_together, under_way=True)


_RAISE_ROW_HOLD = Statement(
    update(ledger)
    .where(ledger.c.id == bindparam("call_id"), ledger.c.status == "forwarded")
    .values(hold_nanos=ledger.c.hold_nanos + bindparam("extra"))
)


async def raise_hold(engine: AsyncEngine, call_id: str, extra: int) -> bool:
    """Hold ``extra`` more for an open call (a fallback that may cost more than what was
    held); False, holding nothing more, if a budget on its path has no room for it."""

    def raising() -> Program[None]:
        if (yield execute(_RAISE_ROW_HOLD, call_id=call_id, extra=extra)) != 1:
            raise budgets.NoRoom("", extra, busy=False)
        yield from budgets.raising(call_id, extra)

    try:
        await database.store(engine).write(raising, under_way=True)
    except budgets.NoRoom:
        return False
    return True


async def mark_sent(engine: AsyncEngine, call_id: str) -> bool:
    """Say, before an attempt's last request bytes go, that a provider may now have the
    whole request (the sweeper then charges a lost call instead of releasing it). False if
    the row is no longer open: nothing more may be sent for it."""
    now = database.utcnow()
    store = database.store(engine)
    return bool(await store.alone(lambda: _marking_sent(call_id, now), under_way=True))


def _marking_sent(call_id: str, now: datetime) -> Program[int]:
    return (yield execute(_MARK_SENT, call_id=call_id, now=now))


async def apply_settlement(
    engine: AsyncEngine, call_id: str, settlement: Settlement, *, alerting: bool = True
) -> bool:
    """A settlement kept in the journal: settled as a live one is if its row is still open;
    if the sweeper got there first (charging the expected cost, or releasing the holds),
    corrected to what the call really cost. True if it changed anything."""
    if await settle_call(engine, call_id, settlement, alerting=alerting):
        return True
    values = _settled_columns(settlement)
    async with database.write(engine) as conn:
        swept = (
            await conn.execute(
                select(ledger.c.cost_nanos).where(
                    ledger.c.id == call_id, ledger.c.status.in_(("expired", "released"))
                )
            )
        ).first()
        if swept is None:
            return False  # already settled (this line was applied before) or never opened
        await conn.execute(update(ledger).where(ledger.c.id == call_id).values(**values))
        if settlement.attempt_records:
            await conn.execute(insert(upstream_attempts), _attempt_rows(call_id, settlement))
        await budgets.correct(conn, call_id, settlement.cost_nanos - swept.cost_nanos)
        await run_on(conn, alerts.crossing(call_id))
        if settlement.review:
            await run_on(conn, alerts.reviewing(call_id))
    return True


async def record_rejection(
    engine: AsyncEngine,
    opening: Opening,
    http_status: int,
    error_code: str | None,
    latency_ms: int,
    exhausted_budget_id: str | None = None,
) -> None:
    """A refused call's row; a budget's refusal is announced with it, the first of its
    period (``alerts.exhausting``)."""
    now = database.utcnow()
    row = _row(
        opening,
        status="rejected",
        http_status=http_status,
        error_code=error_code,
        latency_ms=latency_ms,
        created_at=now,
        completed_at=now,
    )
    await database.store(engine).write(lambda: _rejecting(row, exhausted_budget_id, now))


def _rejecting(
    row: dict[str, Any], exhausted_budget_id: str | None, now: datetime
) -> Program[None]:
    yield execute(_INSERT_ROW, **row)
    if exhausted_budget_id is not None:
        yield from alerts.exhausting(exhausted_budget_id, now)


async def sweep(
    engine: AsyncEngine, *, reserved_before: datetime, forwarded_before: datetime, limit: int = 100
) -> int:
    """Finish rows whose worker died; returns how many: released if no provider can have
    had the whole request, else charged their expected cost for review. Safe to run on
    every process at once: PostgreSQL hands each row to one sweeper (SKIP LOCKED), SQLite
    serialises them."""
    stale = and_(
        OPEN_ROWS,  # the partial index of open rows: bounded, not a scan
        ledger.c.created_at < max(reserved_before, forwarded_before),
        or_(
            and_(ledger.c.status == "reserved", ledger.c.created_at < reserved_before),
            and_(ledger.c.status == "forwarded", ledger.c.created_at < forwarded_before),
        ),
    )
    query = (
        select(ledger.c.id, ledger.c.status, ledger.c.expected_nanos, ledger.c.sent_at)
        .where(stale)
        .limit(limit)
    )
    async with database.write(engine) as conn:
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        rows = (await conn.execute(query)).all()
        await budgets.lock_held_by(conn, [row.id for row in rows])
        now = database.utcnow()
        for row in rows:
            # A cache hit, or a call whose request never reached a provider whole: nothing
            # can have been billed. Otherwise it may have been: its expected cost, for review.
            released = row.status == "reserved" or row.sent_at is None
            cost = 0 if released else row.expected_nanos
            await conn.execute(
                update(ledger)
                .where(ledger.c.id == row.id, ledger.c.status == row.status)
                .values(
                    status="released" if released else "expired",
                    error_code="worker_lost",
                    review=None if released else "worker_lost",
                    usage_source=None if released else "expected",
                    cost_nanos=cost,
                    completed_at=now,
                )
            )
            await budgets.settle(conn, row.id, cost)
            if not released:
                await run_on(conn, alerts.crossing(row.id))
                await run_on(conn, alerts.reviewing(row.id))
    return len(rows)


_DERIVED = ("cost_usd", "expected_usd", "hold_usd", "upstream_attempts")


def _to_api(row: Any, attempts: list[AttemptRecord]) -> Call:
    fields = {name: getattr(row, name) for name in Call.__struct_fields__ if name not in _DERIVED}
    return Call(
        **fields,
        cost_usd=usd(row.cost_nanos),
        expected_usd=usd(row.expected_nanos),
        hold_usd=usd(row.hold_nanos),
        upstream_attempts=attempts,
    )


async def list_calls(
    engine: AsyncEngine,
    limit: int,
    cursor: str | None,
    *,
    key_id: str | None = None,
    tenant_id: str | None = None,
    review: bool = False,
) -> CallPage:
    """Ledger rows newest first, each with its upstream attempts: of a key, of a tenant,
    or (``review``) every call charged for an uncertain attempt, an overrun or a sweep."""
    query = select(ledger)
    if key_id:
        query = query.where(ledger.c.key_id == key_id)
    if tenant_id:
        query = query.where(ledger.c.tenant_id == tenant_id)
    if review:
        query = query.where(ledger.c.review.is_not(None))
    async with database.read(engine) as conn:
        rows = (await conn.execute(paginate(query, ledger.c.id, limit, cursor))).all()
        page, next_cursor = split_page(rows, limit, lambda row: row.id)
        attempts: dict[str, list[AttemptRecord]] = {row.id: [] for row in page}
        if page:
            found = await conn.execute(
                select(upstream_attempts)
                .where(upstream_attempts.c.call_id.in_(list(attempts)))
                .order_by(upstream_attempts.c.call_id, upstream_attempts.c.n)
            )
            for attempt in found:
                fields = {name: getattr(attempt, name) for name in AttemptRecord.__struct_fields__}
                attempts[attempt.call_id].append(AttemptRecord(**fields))
    return CallPage(data=[_to_api(row, attempts[row.id]) for row in page], next_cursor=next_cursor)
