"""Budgets are hard caps: exact under concurrency, per period, released on failure."""

import asyncio
import time
from datetime import UTC, datetime, timedelta

import httpx
import msgspec
import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.billing import budgets
from app.ops.audit import Actor
from app.storage import database
from app.storage.database import create_engine
from app.storage.models import budget_counters
from tests.conftest import ADMIN, ledger_invariants
from tests.gateway import FIXTURES, burst, process_env
from tests.ledger_calls import key_with_budgets, open_calls
from tests.processes import serving_many

ACTOR = Actor("test")

SPEECH = (FIXTURES / "speech.wav").read_bytes()
# whisper-1 at $0.006/min: the 5.848 s fixture holds 7 s ($0.0007) and costs 6 s ($0.0006).
# A whole-seconds provider: a 5.85 s file holds, and costs, 6 s at $0.006 a minute.
HOLD, COST = "0.000600000", "0.000600000"
# Fits 5 holds, and 5 settled calls leave less than a hold: exactly 5 calls can ever pass.
FIVE_CALLS = "0.0035"


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("day", "2026-11-23T23:59:59.999999", "2026-11-23", "2026-11-24"),
        ("week", "2026-11-29T12:00:00", "2026-11-23", "2026-11-30"),  # a Sunday; weeks start Monday
        ("month", "2026-12-31T23:00:00", "2026-12-01", "2027-01-01"),
        ("month", "2028-02-29T00:00:00", "2028-02-01", "2028-03-01"),
    ],
)
def test_periods_are_utc_calendar_periods(period, now, start, end):
    bounds = budgets.period_bounds(period, datetime.fromisoformat(now).replace(tzinfo=UTC))
    assert bounds == (
        datetime.fromisoformat(start).replace(tzinfo=UTC),
        datetime.fromisoformat(end).replace(tzinfo=UTC),
    )
    assert budgets.period_bounds("none", datetime.now(UTC)) == (budgets.EPOCH, None)


def test_budget_admin_lifecycle_is_audited(gateway):
    key = gateway.new_key(budgets=[{"limit_usd": "5.00", "period": "day"}])
    (budget,) = gateway.admin("GET", "/admin/budgets", params={"key_id": key["id"]})["data"]
    assert key["budgets"] == [budget]  # echoed, with its id, by the creation
    assert budget["limit_usd"] == "5.000000000"
    assert budget["remaining_usd"] == "5.000000000"
    assert budget["owner"] == "key"
    url = f"/admin/budgets/{budget['id']}"
    assert gateway.admin("PATCH", url, json={"limit_usd": "2.5"})["limit_usd"] == "2.500000000"
    topped = gateway.admin("POST", f"{url}/top-up", json={"amount_usd": "1.25"})
    assert topped["top_up_usd"] == "1.250000000"
    assert topped["remaining_usd"] == "3.750000000"
    assert gateway.admin("POST", f"{url}/reset")["spent_usd"] == "0.000000000"
    actions = [(e["action"], e["actor"]) for e in gateway.admin("GET", f"{url}/events")["data"]]
    assert actions == [
        ("create", "token"),
        ("update", "token"),
        ("top_up", "token"),
        ("reset", "token"),
    ]
    gateway.admin("DELETE", url)
    assert gateway.http.get(url, headers=ADMIN).status_code == 404


@pytest.mark.parametrize("amount", ["-1", "abc", "1.0000000001", "", 5])
def test_money_must_be_an_exact_decimal_string(gateway, amount):
    key = gateway.new_key()
    response = gateway.http.post(
        f"/admin/keys/{key['id']}/budgets",
        json={"limit_usd": amount, "period": "day"},
        headers=ADMIN,
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "limit_usd"


def test_a_call_that_would_break_the_budget_is_402_before_upstream(gateway):
    key = gateway.new_key(budgets=[{"limit_usd": "0.001", "period": "day"}])
    first = gateway.post_audio(key, "openai/whisper-1")
    assert first.status_code == 200
    refused = gateway.post_audio(key, "openai/whisper-1")
    assert refused.status_code == 402
    error = refused.json()["error"]
    assert error["type"] == "budget_exceeded"
    assert error["code"] == "budget_exceeded"
    assert "per day" in error["message"] and "resets at" in error["message"]
    assert "$0.000400000 left" in error["message"]
    assert refused.headers["x-should-retry"] == "false"
    assert len(gateway.upstream_requests()) == 1

    calls = gateway.calls(key)
    assert [c["status"] for c in calls] == ["rejected", "succeeded"]
    assert calls[0]["error_code"] == "budget_exceeded"
    assert calls[1]["hold_usd"] == HOLD and calls[1]["cost_usd"] == COST

    (quota_budget,) = gateway.http.get(
        "/v1/quota", headers={"authorization": f"Bearer {key['secret']}"}
    ).json()["budgets"]
    assert quota_budget["spent_usd"] == COST
    assert quota_budget["held_usd"] == "0.000000000"
    assert quota_budget["remaining_usd"] == "0.000400000"


def test_tenant_budgets_cover_every_key_and_top_ups_reopen_them(gateway):
    first = gateway.new_key()
    tenant_id = first["tenant_id"]
    budget = gateway.admin(
        "POST",
        f"/admin/tenants/{tenant_id}/budgets",
        json={"limit_usd": "0.001", "period": "month"},
    )
    assert budget["owner"] == "tenant"
    second = gateway.new_key()
    assert gateway.post_audio(first, "openai/whisper-1").status_code == 200
    assert gateway.post_audio(second, "openai/whisper-1").status_code == 402
    gateway.admin("POST", f"/admin/budgets/{budget['id']}/top-up", json={"amount_usd": "0.001"})
    assert gateway.post_audio(second, "openai/whisper-1").status_code == 200


def test_failed_calls_release_their_holds(gateway, database_url):
    key = gateway.new_key(budgets=[{"limit_usd": "1", "period": "none"}])
    gateway.script({"status": 500}, {"status": 400, "body": {"error": {"message": "no"}}})
    assert gateway.post_audio(key, "openai/whisper-1").status_code == 502
    assert gateway.post_audio(key, "openai/whisper-1").status_code == 400
    (budget,) = gateway.admin("GET", "/admin/budgets", params={"key_id": key["id"]})["data"]
    assert budget["spent_usd"] == "0.000000000"
    assert budget["held_usd"] == "0.000000000"
    asyncio.run(ledger_invariants(database_url))


def test_200_concurrent_calls_against_a_budget_for_5_pass_exactly_5(gateway, database_url):
    key = gateway.new_key(budgets=[{"limit_usd": FIVE_CALLS, "period": "day"}])
    statuses = [r.status_code for r in asyncio.run(burst([gateway.url], key["secret"], 200))]
    assert statuses.count(200) == 5
    # While the five are in flight the rest would fit once they settle (429 budget_busy);
    # once they have, the spend alone leaves no room (402).
    assert statuses.count(402) + statuses.count(429) == 195
    assert len(gateway.upstream_requests()) == 5
    (budget,) = gateway.admin("GET", "/admin/budgets", params={"key_id": key["id"]})["data"]
    assert budget["spent_usd"] == "0.003000000"
    assert budget["held_usd"] == "0.000000000"
    asyncio.run(ledger_invariants(database_url))


def test_several_processes_share_one_budget_exactly(gateway, database_url, tmp_path):
    """4 gateway processes on PostgreSQL, 2 on one SQLite file; 200 calls, exactly 5 pass."""
    processes = 4 if database_url.startswith("postgresql") else 2
    key = gateway.new_key(budgets=[{"limit_usd": FIVE_CALLS, "period": "day"}])
    env = process_env(database_url, gateway.fake, tmp_path)
    with serving_many(env, tmp_path, processes) as urls:
        statuses = [r.status_code for r in asyncio.run(burst(urls, key["secret"], 200))]
        logs = "".join((tmp_path / f"gateway-{n}.log").read_text() for n in range(processes))
    assert statuses.count(200) == 5, statuses
    assert statuses.count(402) + statuses.count(429) == 195
    assert "database is locked" not in logs
    asyncio.run(ledger_invariants(database_url))


@pytest.mark.anyio
async def test_a_call_straddling_midnight_is_charged_to_the_day_it_reserved_in(engine):
    from app.access import keys, tenants
    from app.billing.ledger import Opening, Settlement, open_call, settle_call
    from app.schemas import BudgetCreate, KeyCreate, TenantCreate

    tenant = await tenants.create_tenant(engine, TenantCreate(name="t"), ACTOR)
    day_budget = BudgetCreate(limit_usd="1", period="day")
    key = await keys.create_key(
        engine, "", KeyCreate(tenant_id=tenant.id, name="k", budgets=[day_budget]), ACTOR
    )
    before_midnight = datetime(2026, 11, 23, 23, 59, 59, 999_000, tzinfo=UTC)
    opening = Opening(
        id="req_straddle",
        key_id=key.id,
        tenant_id=tenant.id,
        endpoint="transcription",
        model_requested="m",
        hold_nanos=700,
    )
    await open_call(engine, opening, "p", "m", now=before_midnight)
    # Settled after midnight (real time is long past it): still the 23rd's money.
    settlement = Settlement(
        status="succeeded",
        http_status=200,
        provider="p",
        model="m",
        attempts=1,
        cost_nanos=600,
        latency_ms=1,
    )
    assert await settle_call(engine, "req_straddle", settlement)
    assert not await settle_call(engine, "req_straddle", settlement)  # never twice
    async with engine.connect() as conn:
        counters = (await conn.execute(select(budget_counters))).all()
    assert [(c.period_start, c.spent_nanos, c.held_nanos) for c in counters] == [
        (datetime(2026, 11, 23, tzinfo=UTC), 600, 0)
    ]
    # A call reserved 2 ms later belongs to the 24th.
    after_midnight = before_midnight + timedelta(milliseconds=2)
    next_call = msgspec.structs.replace(opening, id="req_next_day")
    await open_call(engine, next_call, "p", "m", now=after_midnight)
    async with engine.connect() as conn:
        periods = {
            c.period_start: c.held_nanos for c in (await conn.execute(select(budget_counters)))
        }
    assert periods == {
        datetime(2026, 11, 23, tzinfo=UTC): 0,
        datetime(2026, 11, 24, tzinfo=UTC): 700,
    }


@pytest.mark.anyio
async def test_a_budget_that_refuses_for_good_answers_before_a_busy_one(engine):
    """The key's budget is only busy (a call in flight holds it); the tenant's, checked
    after it, has too little left even once everything settles: the answer is the final
    402, not a 429 that would send the SDK retrying into it."""
    from app.access import keys, tenants
    from app.billing.ledger import Opening, Settlement, open_call, settle_call
    from app.schemas import BudgetCreate, KeyCreate, TenantCreate

    tenant = await tenants.create_tenant(engine, TenantCreate(name="t"), ACTOR)
    key = await keys.create_key(
        engine,
        "",
        KeyCreate(
            tenant_id=tenant.id,
            name="k",
            budgets=[BudgetCreate(limit_usd="0.000001", period="day")],
        ),
        ACTOR,
    )
    other = await keys.create_key(engine, "", KeyCreate(tenant_id=tenant.id, name="other"), ACTOR)
    async with database.write(engine) as conn:  # created after the key's: checked after it
        await budgets.add_budget(
            conn, BudgetCreate(limit_usd="0.000002", period="day"), ACTOR, tenant_id=tenant.id
        )

    def opening(call_id: str, key_id: str, hold: int) -> Opening:
        return Opening(
            id=call_id,
            key_id=key_id,
            tenant_id=tenant.id,
            endpoint="transcription",
            model_requested="m",
            expected_nanos=hold,
            hold_nanos=hold,
        )

    await open_call(engine, opening("req_spent", other.id, 1_500), "p", "m")
    done = Settlement(
        status="succeeded", http_status=200, provider="p", model="m", attempts=1,
        cost_nanos=1_500, latency_ms=1,
    )  # fmt: skip
    assert await settle_call(engine, "req_spent", done)  # the tenant has 500 left
    await open_call(engine, opening("req_in_flight", key.id, 400), "p", "m")
    with pytest.raises(budgets.BudgetExceeded) as refused:
        await open_call(engine, opening("req_next", key.id, 700), "p", "m")
    assert "tenant" in str(refused.value)


@pytest.mark.anyio
async def test_on_postgresql_a_call_opens_and_settles_in_one_statement_each(engine):
    """No BEGIN or COMMIT round trip around either, with a key and a tenant budget on the
    path; a refusal alone goes the long way, to say which budget refused. (SQLite runs
    the steps in one thread hop; only the count of statements differs.)"""
    from app.billing.ledger import AttemptRecord, Opening, Settlement, open_call, settle_call

    key_id, tenant_id = await key_with_budgets(engine, "0.000002", "day")
    opening = Opening(
        id="req_first", key_id=key_id, tenant_id=tenant_id, endpoint="transcription",
        model_requested="m", expected_nanos=1_000, hold_nanos=1_000,
    )  # fmt: skip
    await open_call(engine, opening, "p", "m")  # makes this period's counters
    now = database.utcnow()
    attempt = AttemptRecord(
        n=1, provider="p", model="m", started_at=now, outcome="answered", http_status=200,
        error=None, bytes_sent=10, latency_ms=1, charged_nanos=900,
    )  # fmt: skip
    done = Settlement(
        status="succeeded", http_status=200, provider="p", model="m", attempts=1,
        cost_nanos=900, latency_ms=1, attempt_records=[attempt],
    )  # fmt: skip
    assert await settle_call(engine, opening.id, done)

    statements: list[str] = []
    database.store(engine).trace = lambda sql, args: statements.append(sql)
    try:
        second = msgspec.structs.replace(opening, id="req_second")
        await open_call(engine, second, "p", "m")
        opened = len(statements)
        assert await settle_call(engine, second.id, done)
        settled = len(statements) - opened
        assert not await settle_call(engine, second.id, done)  # once only
        statements.clear()
        with pytest.raises(budgets.BudgetExceeded):  # 1,800 spent: no room for 1,000
            await open_call(engine, msgspec.structs.replace(opening, id="req_third"), "p", "m")
        refused = len(statements)
    finally:
        database.store(engine).trace = None
    if engine.dialect.name == "postgresql":
        assert (opened, settled) == (1, 1) and refused > 1
    async with engine.connect() as conn:
        rows = (
            await conn.execute(select(budget_counters.c.spent_nanos, budget_counters.c.held_nanos))
        ).all()
        attempts = (await conn.exec_driver_sql("SELECT count(*) FROM upstream_attempts")).scalar()
    assert sorted(rows) == [(1_800, 0), (1_800, 0)] and attempts == 2


@pytest.mark.anyio
async def test_calls_holding_a_key_and_a_tenant_budget_settle_concurrently(engine):
    """Reservations and settles over two budgets at once, 40 at a time: every call settles
    and the counters add up. (Each settle locks its counters in budget order, as the
    reservation does; an UPDATE ... FROM in its plan's order deadlocked PostgreSQL under
    the benchmark's load, and a deadlock left is retried.)"""
    from app.billing.ledger import Opening, Settlement, open_call, settle_call

    key_id, tenant_id = await key_with_budgets(engine)
    settled = Settlement(
        status="succeeded", http_status=200, provider="p", model="m", attempts=1,
        cost_nanos=600, latency_ms=1,
    )  # fmt: skip

    async def call(n: int) -> bool:
        opening = Opening(
            id=f"req_{n:04d}", key_id=key_id, tenant_id=tenant_id, endpoint="transcription",
            model_requested="m", hold_nanos=700,
        )  # fmt: skip
        await open_call(engine, opening, "p", "m")
        return await settle_call(engine, opening.id, settled)

    for round_ in range(10):
        assert all(await asyncio.gather(*(call(round_ * 40 + n) for n in range(40))))
    async with engine.connect() as conn:
        counters = (await conn.execute(select(budget_counters))).all()
    assert sorted((c.spent_nanos, c.held_nanos) for c in counters) == [(400 * 600, 0)] * 2


def _settlement(cost: int, provider: str | None = "p"):
    from app.billing.ledger import AttemptRecord, Settlement

    attempt = AttemptRecord(
        n=1, provider=provider, model="m", started_at=database.utcnow(), outcome="answered",
        http_status=200, error=None, bytes_sent=10, latency_ms=1, charged_nanos=cost,
    )  # fmt: skip
    return Settlement(
        status="succeeded", http_status=200, provider="p", model="m", attempts=1,
        cost_nanos=cost, latency_ms=1, attempt_records=[attempt],
    )  # fmt: skip


@pytest.mark.anyio
async def test_calls_settled_while_one_is_in_flight_share_one_statement(engine):
    """On PostgreSQL the settles a process asks for while one is in flight go together,
    in one statement and one commit: each call gets its own answer, row and attempts, each
    counter is charged their sum, a call asked twice is settled once, one settled before
    is left alone, and one whose caller gave up before its statement ran stays open."""
    from app.billing.ledger import settle_call

    key_id, tenant_id = await key_with_budgets(engine)
    ids = [f"req_{n:02d}" for n in range(12)]
    await open_calls(engine, key_id, tenant_id, *ids)
    assert await settle_call(engine, ids[11], _settlement(7))  # settled before, at 7
    statements: list[str] = []
    database.store(engine).trace = lambda sql, args: statements.append(sql)
    try:
        tasks = [
            asyncio.create_task(settle_call(engine, i, _settlement(n))) for n, i in enumerate(ids)
        ]
        tasks.append(asyncio.create_task(settle_call(engine, ids[3], _settlement(3))))  # twice
        await asyncio.sleep(0)  # the first is in flight; the others wait for it
        tasks[5].cancel()
        answers = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        database.store(engine).trace = None
    assert isinstance(answers[5], asyncio.CancelledError)
    assert answers[:5] + answers[6:11] == [True] * 10 and answers[11] is False
    assert sorted([answers[3], answers[12]]) == [False, True]
    if engine.dialect.name == "postgresql":
        assert len(statements) == 2  # the first call's, then everyone else's
    costs = {n: n for n in range(11) if n != 5} | {11: 7}
    async with engine.connect() as conn:
        rows = dict(
            (await conn.exec_driver_sql("SELECT id, status || ':' || cost_nanos FROM ledger")).all()
        )
        attempts = sorted(
            (
                await conn.exec_driver_sql("SELECT call_id, charged_nanos FROM upstream_attempts")
            ).all()
        )
        counters = (await conn.execute(select(budget_counters))).all()
    assert rows == {
        **{ids[n]: f"succeeded:{cost}" for n, cost in costs.items()},
        ids[5]: "forwarded:0",
    }
    assert attempts == [(ids[n], cost) for n, cost in costs.items()]
    spent = sum(costs.values())
    assert sorted((c.spent_nanos, c.held_nanos) for c in counters) == [(spent, 1_000)] * 2


@pytest.mark.anyio
async def test_a_settle_that_fails_fails_only_its_own_call(engine):
    """A settlement the database refuses (an attempt without its provider) fails its own
    caller, not the calls that shared its statement (on PostgreSQL they are settled again
    on their own; SQLite runs each in a savepoint)."""
    from app.billing.ledger import settle_call

    key_id, tenant_id = await key_with_budgets(engine)
    await open_calls(engine, key_id, tenant_id, "req_a", "req_b", "req_c")
    statements: list[str] = []
    database.store(engine).trace = lambda sql, args: statements.append(sql)
    try:
        answers = await asyncio.gather(
            settle_call(engine, "req_a", _settlement(1)),
            settle_call(engine, "req_b", _settlement(2, provider=None)),
            settle_call(engine, "req_c", _settlement(3)),
            return_exceptions=True,
        )
    finally:
        database.store(engine).trace = None
    assert answers[0] is True and answers[2] is True
    assert isinstance(answers[1], IntegrityError), answers[1]
    if engine.dialect.name == "postgresql":  # a's; b's and c's together; each again alone
        assert len(statements) == 4
    async with engine.connect() as conn:
        counters = (await conn.execute(select(budget_counters))).all()
    assert sorted((c.spent_nanos, c.held_nanos) for c in counters) == [(4, 1_000)] * 2


@pytest.mark.anyio
async def test_a_call_cancelled_while_its_settle_waits_is_still_settled(engine):
    """A call whose task is cancelled (its client gone, the server stopping) while its
    settle waits behind another's statement is settled all the same, not left open for the
    sweeper to charge at a guess."""
    from types import SimpleNamespace
    from unittest.mock import MagicMock

    from app.billing.ledger import settle_call
    from app.gateway.settlement import Settlement as CallSettlement

    key_id, tenant_id = await key_with_budgets(engine)
    openings = await open_calls(engine, key_id, tenant_id, "req_first", "req_gone")
    route = SimpleNamespace(name="m", provider_name="p", upstream_model="m")
    gateway = SimpleNamespace(engine=engine, metrics=MagicMock(), observe_call=MagicMock())
    call = SimpleNamespace(
        request_id="req_gone",
        started=time.perf_counter(),
        principal=SimpleNamespace(tenant_id=tenant_id, budget_alerts=False),
    )
    admitted = SimpleNamespace(route=route, audio_ms=1_000)
    gone = CallSettlement(gateway, call, openings["req_gone"], admitted)

    first = asyncio.create_task(settle_call(engine, "req_first", _settlement(1)))
    leaving = asyncio.create_task(gone.failed(502, "upstream_error", route))
    await asyncio.sleep(0)  # the first is in flight; the other's settle waits for it
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert await first
    status = "forwarded"
    for _ in range(500):  # its settlement goes on without it
        async with engine.connect() as conn:
            status = (
                await conn.exec_driver_sql("SELECT status FROM ledger WHERE id = 'req_gone'")
            ).scalar()
        if status != "forwarded":
            break
        await asyncio.sleep(0.01)
    assert status == "failed"


@pytest.mark.anyio
async def test_a_settle_shared_with_others_writes_what_one_alone_writes(engine):
    """Every column a settlement sets, and every field of its attempts, is written alike
    whether the call settles in a shared statement (PostgreSQL's ``earmark_settle``) or in
    a transaction of its own (as when a budget has alert thresholds)."""
    from app.billing.ledger import AttemptRecord, Settlement, settle_call
    from app.billing.metering import Usage

    key_id, tenant_id = await key_with_budgets(engine)
    await open_calls(engine, key_id, tenant_id, "req_shared", "req_alone")
    started = datetime(2026, 12, 4, 12, 0, 0, 123_456, tzinfo=UTC)
    attempts = [
        AttemptRecord(
            n=n,
            provider=f"p{n}",
            model=f"m{n}",
            started_at=started + timedelta(seconds=n),
            outcome=outcome,
            http_status=status,
            error=error,
            bytes_sent=10 * n,
            latency_ms=n,
            charged_nanos=7 * n,
        )
        for n, outcome, status, error in (
            (1, "failed", 503, "http_503"),
            (2, "answered", 200, None),
        )
    ]
    usage = Usage(audio_ms=5_848, input_text_tokens=3, input_audio_tokens=40, output_tokens=12)
    settlement = Settlement(
        status="succeeded", http_status=200, provider="p2", model="m2", attempts=2,
        usage=usage, usage_source="provider", cost_nanos=900, latency_ms=31,
        upstream_latency_ms=27, error_code="none", attempt_records=attempts,
    )  # fmt: skip
    assert await settle_call(engine, "req_shared", settlement)
    assert await settle_call(engine, "req_alone", settlement, alerting=True)
    async with engine.connect() as conn:
        rows = {
            row.id: row._asdict()
            for row in (await conn.exec_driver_sql("SELECT * FROM ledger")).all()
        }
        tries = (await conn.exec_driver_sql("SELECT * FROM upstream_attempts")).all()
    shared, alone = rows["req_shared"], rows["req_alone"]
    for row in (shared, alone):
        del row["id"], row["created_at"], row["completed_at"]
    assert shared == alone and shared["input_audio_tokens"] == 40
    by_call: dict[str, list] = {}
    for attempt in tries:
        by_call.setdefault(attempt.call_id, []).append(attempt[1:])
    assert sorted(by_call["req_shared"]) == sorted(by_call["req_alone"])
    assert len(by_call["req_shared"]) == 2


@pytest.mark.parametrize(
    ("model", "status", "cost"),
    [
        ("slow/whisper-1", 504, COST),  # the provider had it all: charged, for review
        ("down/whisper-1", 200, "0.000308333"),  # Groq's 10 s minimum, and nothing else
        ("flaky/whisper-1", 200, COST),  # a 5xx bills nothing
    ],
    ids=["timeout", "refused-then-fallback", "5xx-then-fallback"],
)
def test_what_each_failure_is_charged_and_holds_return_to_zero(
    gateway, database_url, model, status, cost
):
    key = gateway.new_key(budgets=[{"limit_usd": "1", "period": "none"}])
    scripted = {"slow": {"delay": 1.5}, "flaky": {"status": 500}}.get(model.split("/")[0])
    if scripted:
        gateway.script(scripted)
    assert gateway.post_audio(key, model).status_code == status
    (budget,) = gateway.admin("GET", "/admin/budgets", params={"key_id": key["id"]})["data"]
    assert budget["held_usd"] == "0.000000000"
    (call,) = gateway.calls(key)
    assert budget["spent_usd"] == call["cost_usd"] == cost
    assert (call["review"] == "uncertain") == (status == 504)
    asyncio.run(ledger_invariants(database_url))


def test_spend_plus_holds_never_exceed_the_limit_while_calls_race(gateway, database_url):
    """Calls of different lengths race for a dollar budget; a sampler reads the counter
    all along: spent + held stays within the limit at every sample."""
    limit_nanos = 5_000_000  # $0.005
    key = gateway.new_key(budgets=[{"limit_usd": "0.005", "period": "day"}])
    short = (FIXTURES / "silence-1s.wav").read_bytes()

    async def race() -> list[int]:
        engine = create_engine(database_url)
        samples: list[int] = []
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                async with engine.connect() as conn:
                    row = (await conn.execute(select(budget_counters))).first()
                if row is not None:
                    samples.append(row.spent_nanos + row.held_nanos)
                await asyncio.sleep(0.005)

        async def call(client: httpx.AsyncClient, i: int) -> int:
            audio = SPEECH if i % 3 else short
            response = await client.post(
                f"{gateway.url}/v1/audio/transcriptions",
                headers={"authorization": f"Bearer {key['secret']}"},
                data={"model": "openai/whisper-1"},
                files={"file": ("a.wav", audio, "audio/wav")},
            )
            return response.status_code

        sampler = asyncio.create_task(sample())
        async with httpx.AsyncClient(timeout=60) as client:
            statuses = await asyncio.gather(*(call(client, i) for i in range(60)))
        stop.set()
        await sampler
        await engine.dispose()
        assert samples and max(samples) <= limit_nanos
        return list(statuses)

    statuses = asyncio.run(race())
    assert 200 in statuses and set(statuses) <= {200, 402, 429}
    asyncio.run(ledger_invariants(database_url))


def test_spend_history_per_period(gateway):
    key = gateway.new_key(budgets=[{"limit_usd": "1", "period": "month"}])
    assert gateway.post_audio(key, "openai/whisper-1").status_code == 200
    (budget,) = gateway.admin("GET", "/admin/budgets", params={"key_id": key["id"]})["data"]
    (period,) = gateway.admin("GET", f"/admin/budgets/{budget['id']}/periods")["data"]
    assert period["period_start"] == budget["period_start"]
    assert period["spent_usd"] == COST
    assert period["held_usd"] == "0.000000000"
