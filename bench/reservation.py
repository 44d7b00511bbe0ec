"""What the budget reservation costs, and how many calls one hot key settles per second.

For each database (a fresh SQLite file, and PostgreSQL when a server URL is given) it runs
the ledger path of one call (open with holds, settle) for a key with no
budget (the baseline) and for a key whose call must fit a key budget and a tenant budget,
first one call at a time (latency), then from 16 concurrent tasks on the same hot key.

    python -m bench.reservation [--postgres postgresql+asyncpg://postgres@127.0.0.1/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import make_url, text

from app.access import keys, tenants
from app.billing import ledger
from app.ids import new_id
from app.ops.audit import Actor
from app.schemas import BudgetCreate, KeyCreate, TenantCreate
from app.storage import database
from app.storage.database import create_engine
from app.storage.migrate import upgrade_engine

ACTOR = Actor("test")

SETTLED = ledger.Settlement(
    status="succeeded",
    http_status=200,
    provider="p",
    model="m",
    attempts=1,
    cost_nanos=600,
    latency_ms=1,
)


async def one_call(engine, key, tenant_id: str) -> None:
    opening = ledger.Opening(
        id=new_id("req"),
        key_id=key.id,
        tenant_id=tenant_id,
        endpoint="transcription",
        model_requested="m",
        hold_nanos=700,
    )
    await ledger.open_call(engine, opening, "p", "m")
    assert await ledger.settle_call(engine, opening.id, SETTLED)


async def hot_key_rate(engine, key, tenant_id: str, seconds: float, concurrency: int) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await one_call(engine, key, tenant_id)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return round(done / (time.perf_counter() - started), 1)


async def measure(url: str, sequential: int, seconds: float, concurrency: int) -> dict[str, float]:
    engine = create_engine(url)
    await upgrade_engine(engine)
    results: dict[str, float] = {}
    for label, with_budgets in (("no_budget", False), ("key_and_tenant_budget", True)):
        tenant = await tenants.create_tenant(
            engine, TenantCreate(name=f"bench-{uuid.uuid4().hex[:8]}"), ACTOR
        )
        budgets = [BudgetCreate(limit_usd="1000000", period="day")] if with_budgets else []
        key = await keys.create_key(
            engine, "", KeyCreate(tenant_id=tenant.id, name="hot", budgets=budgets), ACTOR
        )
        if with_budgets:
            async with database.write(engine) as conn:
                from app.billing.budgets import add_budget

                await add_budget(
                    conn,
                    BudgetCreate(limit_usd="1000000", period="month"),
                    ACTOR,
                    tenant_id=tenant.id,
                )
        for _ in range(20):
            await one_call(engine, key, tenant.id)
        times = []
        for _ in range(sequential):
            started = time.perf_counter()
            await one_call(engine, key, tenant.id)
            times.append((time.perf_counter() - started) * 1000)
        results[f"{label}_p50_ms"] = round(statistics.median(times), 3)
        results[f"{label}_p95_ms"] = round(sorted(times)[int(0.95 * len(times))], 3)

        rate = await hot_key_rate(engine, key, tenant.id, seconds, concurrency)
        results[f"{label}_settled_calls_per_s_c{concurrency}"] = rate
    results["reservation_adds_p50_ms"] = round(
        results["key_and_tenant_budget_p50_ms"] - results["no_budget_p50_ms"], 3
    )
    await engine.dispose()
    return results


async def postgres_database(server: str) -> tuple[str, str]:
    if not server.startswith("postgresql+asyncpg://"):  # as EARMARK_DATABASE_URL takes it
        raise SystemExit(f"--postgres takes a postgresql+asyncpg:// URL, not {server!r}")
    name = f"earmark_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    await admin.dispose()
    return name, make_url(server).set(database=name).render_as_string(hide_password=False)


async def drop(server: str, name: str) -> None:
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--postgres", help="a PostgreSQL server URL the bench may create a database on"
    )
    parser.add_argument("--sequential", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    report = {}
    sqlite = f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
    report["sqlite"] = await measure(sqlite, args.sequential, args.seconds, args.concurrency)
    if args.postgres:
        name, url = await postgres_database(args.postgres)
        try:
            report["postgresql"] = await measure(
                url, args.sequential, args.seconds, args.concurrency
            )
        finally:
            await drop(args.postgres, name)
    print(json.dumps(report, indent=2))
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "reservation.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
