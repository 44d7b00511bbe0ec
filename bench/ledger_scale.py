"""Does a call cost more when the ledger is large? The call path's statements and the
sweeper, timed on an empty ledger and on one of 300,000 rows (most of them the hot key's
own), on SQLite and, given ``--postgres``, PostgreSQL.

    python -m bench.ledger_scale [--rows 300000] [--calls 300] [--postgres URL]

Prints p50 per operation and the ratio large/empty; a bounded statement stays near 1.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert, make_url, text

from app.access import keys, tenants
from app.billing import ledger, rate_limits
from app.ops.audit import Actor
from app.schemas import BudgetCreate, KeyCreate, RateLimits, TenantCreate
from app.storage import database
from app.storage.database import create_engine
from app.storage.migrate import upgrade
from app.storage.models import ledger as ledger_table

ACTOR = Actor("test")

LIMITS = RateLimits(
    requests_per_minute=1_000_000, audio_seconds_per_window=10**9, max_concurrent=10_000
)


async def fill_ledger(url: str, key_id: str, tenant_id: str, rows: int) -> None:
    """Add ``rows`` of settled history to the ledger at ``url``, all of one key."""
    engine = create_engine(url)
    try:
        await _fill(engine, key_id, tenant_id, rows)
    finally:
        await engine.dispose()


async def _fill(engine, key_id: str, tenant_id: str, rows: int) -> None:
    """Settled history: calls of the last 30 days, spread out, all of the hot key."""
    now = database.utcnow()
    batch = []
    for n in range(rows):
        batch.append(
            {
                "id": f"req_{n:026d}",
                "key_id": key_id,
                "tenant_id": tenant_id,
                "endpoint": "transcription",
                "status": "succeeded",
                "model_requested": "m",
                "attempts": 1,
                "stream": False,
                "probed_audio_ms": 6000,
                "cost_nanos": 600_000,
                "expected_nanos": 600_000,
                "hold_nanos": 600_000,
                "created_at": now - timedelta(seconds=30 * 86400 * n / rows + 3600),
                "completed_at": now,
            }
        )
        if len(batch) == 5000:
            async with database.write(engine) as conn:
                await conn.execute(insert(ledger_table), batch)
            batch = []
    if batch:
        async with database.write(engine) as conn:
            await conn.execute(insert(ledger_table), batch)


async def _measure(url: str, rows: int, calls: int) -> dict[str, float]:
    engine = create_engine(url)
    try:
        tenant = await tenants.create_tenant(engine, TenantCreate(name="bench"), ACTOR)
        budget = BudgetCreate(limit_usd="1000000", period="month")
        key = await keys.create_key(
            engine, "", KeyCreate(tenant_id=tenant.id, name="hot", budgets=[budget]), ACTOR
        )
        if rows:
            await _fill(engine, key.id, tenant.id, rows)
        timings: dict[str, list[float]] = {"open": [], "settle": [], "use": [], "sweep": []}
        for n in range(calls):
            opening = ledger.Opening(
                id=f"req_bench{n:020d}", key_id=key.id, tenant_id=tenant.id,
                endpoint="transcription", model_requested="m", probed_audio_ms=6000,
                expected_nanos=600_000, hold_nanos=600_000,
            )  # fmt: skip
            started = time.perf_counter()
            await ledger.open_call(engine, opening, "p", "m", limits=LIMITS)
            timings["open"].append(time.perf_counter() - started)
            settlement = ledger.Settlement(
                status="succeeded", http_status=200, provider="p", model="m", attempts=1,
                cost_nanos=600_000, latency_ms=1,
            )  # fmt: skip
            started = time.perf_counter()
            await ledger.settle_call(engine, opening.id, settlement)
            timings["settle"].append(time.perf_counter() - started)
            started = time.perf_counter()
            async with engine.connect() as conn:
                await rate_limits.current_use(conn, key.id, LIMITS, database.utcnow())
            timings["use"].append(time.perf_counter() - started)
            if n % 10 == 0:
                now = database.utcnow()
                started = time.perf_counter()
                await ledger.sweep(
                    engine,
                    reserved_before=now - timedelta(minutes=1),
                    forwarded_before=now - timedelta(minutes=20),
                )
                timings["sweep"].append(time.perf_counter() - started)
        return {name: statistics.median(values) * 1000 for name, values in timings.items()}
    finally:
        await engine.dispose()


async def _admin_sql(server: str, statement: str) -> None:
    engine = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


async def _database(kind: str, postgres: str | None, directory: Path, name: str) -> str:
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{directory / name}.db"
    else:
        assert postgres
        await _admin_sql(postgres, f'CREATE DATABASE "earmark_bench_{name}"')
        url = make_url(postgres).set(database=f"earmark_bench_{name}").render_as_string(False)
    await asyncio.to_thread(upgrade, url)
    return url


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--postgres", help="a PostgreSQL server URL to create databases on")
    args = parser.parse_args()
    kinds = ["sqlite"] + (["postgres"] if args.postgres else [])
    with tempfile.TemporaryDirectory() as directory:
        for kind in kinds:
            figures = {}
            for label, rows in (("empty", 0), ("large", args.rows)):
                url = await _database(kind, args.postgres, Path(directory), label)
                try:
                    figures[label] = await _measure(url, rows, args.calls)
                finally:
                    if kind == "postgres":
                        assert args.postgres
                        await _admin_sql(
                            args.postgres,
                            f'DROP DATABASE IF EXISTS "earmark_bench_{label}" WITH (FORCE)',
                        )
            print(f"{kind}: p50 ms, empty ledger → {args.rows:,} rows (ratio)")
            for name in figures["empty"]:
                empty, large = figures["empty"][name], figures["large"][name]
                print(f"  {name:7} {empty:7.3f} → {large:7.3f}  ({large / empty:.2f}x)")


if __name__ == "__main__":
    asyncio.run(main())
