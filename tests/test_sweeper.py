"""Rows whose worker died are finished: holds of calls no provider had whole released,
calls a provider may have had charged their expected cost for review, and a late worker
cannot go upstream after a sweep."""

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.billing import ledger
from app.storage import database
from app.storage.driver import Statement, fetch
from app.storage.models import budget_counters
from app.storage.models import ledger as ledger_table
from tests.conftest import empty_database
from tests.ledger_calls import key_with_budgets, open_calls

pytestmark = pytest.mark.anyio


async def _open(engine, key_id, tenant_id, call_id, age: timedelta, status="forwarded"):
    await open_calls(
        engine, key_id, tenant_id, call_id, hold=700, expected=600, age=age, status=status
    )


async def test_sweep_releases_unsent_calls_and_charges_sent_ones(engine):
    key_id, tenant_id = await key_with_budgets(engine, period="none", tenant_budget=False)
    old = timedelta(hours=2)
    await _open(engine, key_id, tenant_id, "req_never_sent", old, status="reserved")
    await _open(engine, key_id, tenant_id, "req_lost_mid_upload", old)  # forwarded, never whole
    await _open(engine, key_id, tenant_id, "req_sent_then_lost", old)
    assert await ledger.mark_sent(engine, "req_sent_then_lost")
    await _open(engine, key_id, tenant_id, "req_in_flight", timedelta(seconds=1), status="reserved")

    now = database.utcnow()
    swept = await ledger.sweep(
        engine,
        reserved_before=now - timedelta(minutes=1),
        forwarded_before=now - timedelta(hours=1),
    )
    assert swept == 3
    async with engine.connect() as conn:
        rows = {row.id: row for row in (await conn.execute(select(ledger_table))).all()}
        (counter,) = (await conn.execute(select(budget_counters))).all()
    for unsent in ("req_never_sent", "req_lost_mid_upload"):
        row = rows[unsent]
        assert (row.status, row.cost_nanos, row.review) == ("released", 0, None)
    lost = rows["req_sent_then_lost"]
    assert (lost.status, lost.cost_nanos, lost.review) == ("expired", 600, "worker_lost")
    assert (lost.error_code, lost.usage_source) == ("worker_lost", "expected")
    assert rows["req_in_flight"].status == "reserved"
    assert counter.spent_nanos == 600  # the lost forwarded call, which the provider may bill
    assert counter.held_nanos == 700  # only the call still in flight

    # The workers of the swept calls wake up: neither may settle.
    settlement = ledger.Settlement(
        status="succeeded", http_status=200, provider="p", model="m", attempts=1, latency_ms=1
    )
    assert not await ledger.settle_call(engine, "req_sent_then_lost", settlement)
    assert not await ledger.settle_call(engine, "req_never_sent", settlement)
    assert not await ledger.mark_sent(engine, "req_lost_mid_upload")  # nothing more goes

    again = await ledger.sweep(
        engine,
        reserved_before=now - timedelta(minutes=1),
        forwarded_before=now - timedelta(hours=1),
    )
    assert again == 0


@pytest.mark.postgres
async def test_the_sent_marks_relaxed_commit_stays_its_own(migrated_postgres):
    """On PostgreSQL the mark's commit waits for no WAL flush (``synchronous_commit`` off
    for its own transaction only): the pooled connection it ran on commits the next call's
    open and settle durably, as every other statement of the call path."""
    engine = database.create_engine(migrated_postgres)
    try:
        key_id, tenant_id = await key_with_budgets(engine, period="none", tenant_budget=False)
        store = database.store(engine)
        setting = Statement(select(func.current_setting("synchronous_commit").label("setting")))

        def showing():
            return (yield fetch(setting))

        for n in range(3):  # one connection at a time: each time the same one, reused
            await _open(engine, key_id, tenant_id, f"req_marked_{n}", timedelta(0))
            assert await ledger.mark_sent(engine, f"req_marked_{n}")
            assert await store.alone(showing) == [("on",)]
        async with engine.connect() as conn:
            marked = (await conn.execute(select(ledger_table.c.sent_at))).scalars().all()
        assert len(marked) == 3 and None not in marked
    finally:
        await engine.dispose()
        await empty_database(migrated_postgres)
