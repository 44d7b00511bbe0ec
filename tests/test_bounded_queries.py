"""The statements that run on every call and in every sweep are served by indexes bounded
by the rows in flight or a time window, never by a scan of the ledger: their plans are
read from the database itself. (``python -m bench.ledger_scale`` times them at 300,000
rows.)"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event

from app.access import keys, tenants
from app.billing import ledger, rate_limits
from app.ops.audit import Actor
from app.schemas import BudgetCreate, KeyCreate, RateLimits, TenantCreate
from app.storage import database

ACTOR = Actor("test")

pytestmark = pytest.mark.anyio
LIMITS = RateLimits(requests_per_minute=60, audio_seconds_per_window=3600, max_concurrent=4)


async def _plans(engine, statements) -> list[str]:
    plans = []
    async with engine.connect() as conn:
        postgres = conn.dialect.name == "postgresql"
        if postgres:  # "could an index serve it?", whatever a tiny table would prefer
            await conn.exec_driver_sql("SET enable_seqscan = off")
        for statement, parameters in statements:
            explain = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
            rows = await conn.exec_driver_sql(explain + statement, parameters)
            plans.append(" | ".join(str(row[-1]) for row in rows))
    return plans


async def test_rate_limits_reservations_settles_and_the_sweep_use_bounded_indexes(engine):
    tenant = await tenants.create_tenant(engine, TenantCreate(name="t"), ACTOR)
    budget = BudgetCreate(limit_usd="1", period="day")
    key = await keys.create_key(
        engine,
        "",
        KeyCreate(tenant_id=tenant.id, name="k", budgets=[budget], rate_limits=LIMITS),
        ACTOR,
    )
    seen: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "UPDATE")) and "ledger" in statement:
            seen.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    # The call path's statements run on the bare drivers (app/storage/driver.py).
    database.store(engine).trace = lambda sql, args: capture(None, None, sql, tuple(args), 0, 0)
    opening = ledger.Opening(
        id="req_bounded", key_id=key.id, tenant_id=tenant.id, endpoint="transcription",
        model_requested="m", probed_audio_ms=1000, expected_nanos=100, hold_nanos=100,
    )  # fmt: skip
    await ledger.open_call(engine, opening, "p", "m", limits=LIMITS)
    settled = ledger.Settlement(
        status="succeeded", http_status=200, provider="p", model="m", attempts=1, latency_ms=1
    )
    await ledger.settle_call(engine, opening.id, settled)
    now = database.utcnow()
    await ledger.sweep(
        engine,
        reserved_before=now - timedelta(minutes=1),
        forwarded_before=now - timedelta(hours=1),
    )
    async with engine.connect() as conn:
        await rate_limits.current_use(conn, key.id, LIMITS, now)
    event.remove(engine.sync_engine, "before_cursor_execute", capture)

    plans = await _plans(engine, seen)
    assert plans
    for (statement, _), plan in zip(seen, plans, strict=True):
        on_ledger = "ledger" in plan
        assert not ("Seq Scan on ledger" in plan or "SCAN ledger" in plan), (statement, plan)
        if on_ledger:
            assert any(n in plan for n in ("ix_ledger", "pk_ledger", "autoindex_ledger")), plan
    joined = " ".join(plans)
    assert "ix_ledger_open" in joined  # the in-flight count
    assert "ix_ledger_open_created_at" in joined  # the sweep
    assert "ix_ledger_key_id_created_at" in joined  # the window of the rate limits
